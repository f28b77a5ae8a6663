"""The fog gateway: validates, stores and forwards what a site's devices publish, and relays
commands and model updates down to them."""

from evc.gateway.daemon import Gateway
from evc.gateway.downlink import DownlinkRelay
from evc.gateway.intake import admit
from evc.gateway.models import ModelRelay

__all__ = ["DownlinkRelay", "Gateway", "ModelRelay", "admit"]
