"""A device app with real inference: synthetic camera -> ONNX detector -> EVC device.

Run `evc broker up` in another terminal, then:
    python samples/camera_app.py mqtt://127.0.0.1:PORT
"""

import itertools
import sys

from evc import Device
from evc.device import ChangeFilter, PublishMode
from evc.inference import Detector
from evc.synthetic import SyntheticCamera
from evc.synthetic.sample_model import sample_model_path

broker = sys.argv[1] if len(sys.argv) > 1 else "mqtt://127.0.0.1:1883"
frames = int(sys.argv[2]) if len(sys.argv) > 2 else 200
detector = Detector(sample_model_path(), conf_threshold=0.4)
camera = SyntheticCamera(seed=1)
only_changes = ChangeFilter(mode=PublishMode.ON_CHANGE, keyframe_interval_s=5)

with Device(
    device_id="cam-01", site="sample-site", broker=broker, state_dir="var/sample",
    model_version=detector.model_version, change_filter=only_changes, heartbeat_interval_s=2,
) as device:
    for frame in itertools.islice(camera, frames):
        device.publish_frame(detector(frame.image))  # latency goes into heartbeats
    device.publish_heartbeat()
    device.wait_until_sent(timeout_s=10)
    counts = device.change_filter.counts
    print(f"{frames} frames: {counts.published} published, {counts.suppressed} unchanged")
    print(f"heartbeat: {device.health.fields()}")
