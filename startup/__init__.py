"""The fast-startup chain that ``Predictor.setup()`` runs, one module per stage."""
