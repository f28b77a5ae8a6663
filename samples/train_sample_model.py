"""Train the EVC sample detector on the synthetic scene and write it as ONNX with a model card.

Runs on the CPU with numpy only (no network, no PyTorch). The committed model was made with::

    python samples/train_sample_model.py --steps 2500 --seed 0 --out samples/models/shapes-v1.onnx

Accuracy is measured through the exported graph in ONNX Runtime, on held-out seeded frames of
the base scene and of the shifted scene, and recorded in the model's metadata and in the card
(``<out>.json``). See docs/SAMPLE_MODEL.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).parent / "models" / "shapes-v1.onnx"
# Seeds of the held-out frames. Training draws its frames from generators seeded by --seed
# through a different path, so the sets never share a frame.
VALIDATION_SEED = 1_000_001
TEST_SEED = 1_000_002


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2500, help="training steps of 16 frames")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0, help="seeds initialisation and data")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the .onnx")
    parser.add_argument("--version", default="shapes-1", help="evc_model_version metadata")
    parser.add_argument("--eval-frames", type=int, default=300, help="held-out frames per domain")
    parser.add_argument("--eval-every", type=int, default=250, help="validate every N steps")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        # Must be set before numpy loads OpenBLAS; on a busy 2-core box 1 thread can be faster.
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)
    import numpy as np  # noqa: PLC0415 - after the thread settings above
    import onnx  # noqa: PLC0415

    from evc.synthetic import CLASS_NAMES, Domain, SceneConfig, random_frames  # noqa: PLC0415
    from evc.training import export, measure  # noqa: PLC0415
    from evc.training.data import SceneDataset  # noqa: PLC0415
    from evc.training.model import ModelConfig, count_params  # noqa: PLC0415
    from evc.training.train import Progress, TrainConfig, train  # noqa: PLC0415

    scene, model_config = SceneConfig(), ModelConfig()
    shifted = SceneConfig(domain=Domain.SHIFTED)
    validation = list(random_frames(VALIDATION_SEED, 100, config=scene))
    test_base = list(random_frames(TEST_SEED, args.eval_frames, config=scene))
    test_shifted = list(random_frames(TEST_SEED, args.eval_frames, config=shifted))

    def report(p: Progress) -> None:
        if p.step % 50 == 0 or p.map50 is not None:
            note = f"  val mAP@0.5 {p.map50:.3f}" if p.map50 is not None else ""
            print(
                f"step {p.step:5d}/{p.steps}  {p.elapsed_s:6.0f} s  loss {p.loss:.3f}  "
                f"lr {p.learning_rate:.5f}{note}",
                flush=True,
            )

    config = TrainConfig(steps=args.steps, time_budget_s=args.seconds, eval_every=args.eval_every)
    print(f"training {model_config} on the synthetic scene, seed {args.seed}", flush=True)
    result = train(
        None,
        SceneDataset(scene),
        config=config,
        model_config=model_config,
        seed=args.seed,
        eval_frames=validation,
        progress=report,
    )
    print(f"trained {result.steps} steps in {result.seconds:.0f} s ({result.stopped_by})")

    provisional = export.to_onnx(result.params, model_config, class_names=CLASS_NAMES)
    run = measure.onnx_predictor(provisional.SerializeToString())
    map_base = measure.map50(run, test_base, num_classes=len(CLASS_NAMES))
    map_shifted = measure.map50(run, test_shifted, num_classes=len(CLASS_NAMES))
    print(
        f"ONNX Runtime, {args.eval_frames} held-out frames: mAP@0.5 base {map_base:.3f}, "
        f"shifted {map_shifted:.3f}"
    )

    props = {
        "evc_model_version": args.version,
        "map50": f"{map_base:.4f}",
        "map50_shifted": f"{map_shifted:.4f}",
        "map50_eval": f"{args.eval_frames} frames, random_frames seed {TEST_SEED}",
        "train_seed": str(args.seed),
        "train_steps": str(result.steps),
        "train_seconds": f"{result.seconds:.0f}",
    }
    model = export.to_onnx(result.params, model_config, class_names=CLASS_NAMES, metadata=props)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))
    data = args.out.read_bytes()
    card: dict[str, Any] = {
        "file": args.out.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "parameters": count_params(result.params),
        "input": {
            "name": export.INPUT_NAME,
            "shape": [1, 3, model_config.imgsz, model_config.imgsz],
            "format": "RGB, 0..1, NCHW",
        },
        "output": {
            "name": export.OUTPUT_NAME,
            "shape": [1, model_config.outputs, model_config.grid**2],
            "layout": "cx, cy, w, h (pixels), class scores",
        },
        "classes": list(CLASS_NAMES),
        "metadata": export.metadata(model),
        "training": {
            "steps": result.steps,
            "batch_size": config.batch_size,
            "seconds": round(result.seconds),
            "stopped_by": result.stopped_by,
            "seed": args.seed,
            "command": "python samples/train_sample_model.py " + " ".join(sys.argv[1:]),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "onnx": onnx.__version__,
            "cpu_count": os.cpu_count(),
        },
    }
    card_path = args.out.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out} ({len(data) / 1e6:.2f} MB) and {card_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
