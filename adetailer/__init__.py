"""ADetailer-style face and hand inpainting, run only when a request asks for it.

Nothing in this package imports a detector library at import time: with ``adetailer=false`` the
request path must not construct, import or spend anything here.
"""
