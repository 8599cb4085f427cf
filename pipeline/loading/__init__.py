"""Getting a model into memory, once: which model a request gets (``select``), the one model cache
(``cache``), the SDXL and Flux loaders, the weight stream and its component builder, the weights'
location, checks and download, and the hardware profile's placement."""
