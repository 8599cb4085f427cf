"""Everything the service fetches over the network goes through here: weights at setup, LoRAs
per request, image inputs. One policy for all of it (``FetchPolicy``): parallel HTTP Range chunks,
each retried and resumed on its own; one in-order consumer that hashes and unpacks as bytes arrive;
an overall deadline; size caps on the wire and unpacked; caller-given URLs fenced to global
addresses, connected to the address that was checked. Nothing half-delivered is ever kept:
a cache entry appears by atomic rename only after it is proven complete (``netfetch.cache``).
"""

from netfetch.errors import BadURL, FetchError, Incomplete, TooLarge, TooSlow, UnsafeURL
from netfetch.policy import FetchPolicy

__all__ = ["BadURL", "FetchError", "FetchPolicy", "Incomplete", "TooLarge", "TooSlow", "UnsafeURL"]
