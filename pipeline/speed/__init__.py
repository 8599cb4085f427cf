"""Generation speed switches: their settings and every eligibility rule (``settings``, from
``pipeline/configs/speed.json``), what they change at load (``apply``), and each technique in a
module of its own."""
