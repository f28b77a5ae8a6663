"""The fog gateway: validates, stores and forwards what a site's devices publish."""

from evc.gateway.daemon import Gateway
from evc.gateway.intake import admit

__all__ = ["Gateway", "admit"]
