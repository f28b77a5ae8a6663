"""A minimal device app: publish detections from a (synthetic) camera loop to the fog broker.

Run `evc broker up` in another terminal, then:
    python samples/device_app.py mqtt://127.0.0.1:PORT
"""

import sys
import time

import numpy as np

from evc import Device
from evc.device import synthetic_detections

broker = sys.argv[1] if len(sys.argv) > 1 else "mqtt://127.0.0.1:1883"
rng = np.random.default_rng(0)

with Device(
    device_id="cam-01", site="sample-site", broker=broker, state_dir="var/sample"
) as device:
    for _ in range(100):
        class_ids, scores, boxes = synthetic_detections(rng, 5)  # stands in for a detector
        key = device.publish_detections(
            class_ids=class_ids, scores=scores, boxes=boxes, width=640, height=480
        )
        time.sleep(0.05)
    device.wait_until_sent(timeout_s=10)
    print(f"published up to {key}; {device.buffered} still buffered")
