"""Unit tests of letterboxing and of mapping boxes back to frame pixels."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import pytest

from evc.errors import FrameError
from evc.inference import Interpolation, Letterbox, letterbox, unletterbox_boxes

PAD = np.float32(114 / 255)


def solid(height: int, width: int, rgb: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    frame = np.empty((height, width, 3), np.uint8)
    frame[...] = rgb
    return frame


class TestLetterbox:
    def test_landscape_frame_is_padded_above_and_below(self) -> None:
        tensor, box = letterbox(solid(480, 640, (255, 0, 51)), (320, 320))
        assert tensor.shape == (1, 3, 320, 320)
        assert tensor.dtype == np.float32
        assert box == Letterbox(
            width=640, height=480, scale_x=0.5, scale_y=0.5, pad_left=0, pad_top=40
        )
        assert np.all(tensor[0, :, :40] == PAD)
        assert np.all(tensor[0, :, 280:] == PAD)
        means = tensor[0, :, 40:280, :].reshape(3, -1).mean(1)
        np.testing.assert_allclose(means, [1, 0, 0.2], rtol=1e-6)

    def test_portrait_frame_is_padded_left_and_right(self) -> None:
        tensor, box = letterbox(solid(640, 320, (10, 20, 30)), (320, 320))
        assert (box.pad_left, box.pad_top) == (80, 0)
        assert np.all(tensor[0, :, :, :80] == PAD)
        assert np.all(tensor[0, :, :, 240:] == PAD)

    def test_bgr_frames_are_turned_into_rgb(self) -> None:
        rgb, _ = letterbox(solid(48, 64, (200, 100, 0)), (32, 32))
        bgr, _ = letterbox(solid(48, 64, (0, 100, 200)), (32, 32), bgr=True)
        np.testing.assert_array_equal(rgb, bgr)

    @pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
    def test_resampling_follows_the_image(self, interpolation: Interpolation) -> None:
        # A horizontal ramp stays a ramp, monotonic and within range, whatever the method.
        ramp = np.repeat(np.linspace(0, 255, 200).astype(np.uint8)[None, :, None], 100, 0)
        frame = np.repeat(ramp, 3, axis=2)
        tensor, box = letterbox(frame, (64, 64), interpolation=interpolation)
        row = tensor[0, 0, 32, box.pad_left : 64 - box.pad_left]
        assert np.all(np.diff(row) >= 0)
        assert row[0] < 0.05
        assert row[-1] > 0.95

    def test_bilinear_averages_neighbours_when_halving(self) -> None:
        frame = np.zeros((2, 4, 3), np.uint8)
        frame[:, 1::2] = 200  # columns alternate 0, 200
        tensor, _ = letterbox(frame, (1, 2), interpolation="bilinear")
        np.testing.assert_allclose(tensor[0, :, 0, :], 100 / 255, rtol=1e-6)

    def test_bilinear_matches_a_per_pixel_reference(self) -> None:
        frame = np.random.default_rng(3).integers(0, 256, (30, 50, 3), dtype=np.uint8)
        tensor, box = letterbox(frame, (20, 20), interpolation="bilinear")
        inner = tensor[0, :, box.pad_top : 20 - box.pad_top, :]
        np.testing.assert_allclose(inner, reference_bilinear(frame, 12, 20), atol=1e-5)

    def test_bilinear_buffers_are_not_shared_between_sizes_or_threads(self) -> None:
        rng = np.random.default_rng(4)
        frames = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(48, 64, 3)] * 4]
        frames += [rng.integers(0, 256, (90, 40, 3), dtype=np.uint8) for _ in range(4)]

        def resize(frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.floating]:
            return letterbox(frame, (32, 32), interpolation="bilinear")[0]

        expected = [resize(f) for f in frames]
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in range(5):
                got = pool.map(resize, frames)
                for a, b in zip(expected, got, strict=True):
                    np.testing.assert_array_equal(a, b)

    def test_filling_a_reused_tensor_gives_the_same_result(self) -> None:
        rng = np.random.default_rng(5)
        reused = np.full((1, 3, 32, 32), np.nan, np.float32)
        for shape in [(48, 64, 3), (64, 48, 3), (32, 32, 3)]:
            frame = rng.integers(0, 256, shape, dtype=np.uint8)
            fresh, _ = letterbox(frame, (32, 32))
            filled, _ = letterbox(frame, (32, 32), out=reused)
            assert filled is reused
            np.testing.assert_array_equal(filled, fresh)
        with pytest.raises(ValueError, match="shape"):
            letterbox(frame, (16, 16), out=reused)

    def test_half_precision_tensor(self) -> None:
        tensor, _ = letterbox(solid(10, 10, (0, 0, 0)), (8, 8), dtype=np.float16)
        assert tensor.dtype == np.float16

    def test_non_contiguous_frames_are_accepted(self) -> None:
        frame = solid(100, 200, (1, 2, 3))[::2, ::2]
        tensor, box = letterbox(frame, (32, 32))
        assert (box.width, box.height) == (100, 50)
        assert tensor.shape == (1, 3, 32, 32)

    @pytest.mark.parametrize(
        "frame",
        [
            np.zeros((10, 10), np.uint8),
            np.zeros((10, 10, 4), np.uint8),
            np.zeros((10, 10, 3), np.float32),
            np.zeros((0, 10, 3), np.uint8),
            [[0, 0, 0]],
        ],
    )
    def test_frames_of_the_wrong_kind_are_rejected(self, frame: object) -> None:
        with pytest.raises(FrameError, match="expected"):
            letterbox(frame, (32, 32))  # type: ignore[arg-type]


class TestUnletterbox:
    @pytest.mark.parametrize(
        ("height", "width"), [(480, 640), (640, 480), (720, 1280), (100, 100), (37, 301)]
    )
    @pytest.mark.parametrize("size", [(320, 320), (640, 640), (384, 640)])
    def test_round_trip_of_box_coordinates(
        self, height: int, width: int, size: tuple[int, int]
    ) -> None:
        frame = np.zeros((height, width, 3), np.uint8)
        _, box = letterbox(frame, size)
        original = np.array(
            [[0, 0, width, height], [width * 0.25, height * 0.1, width * 0.6, height * 0.9]],
            np.float32,
        )
        in_input = original.copy()
        in_input[:, 0::2] = in_input[:, 0::2] * box.scale_x + box.pad_left
        in_input[:, 1::2] = in_input[:, 1::2] * box.scale_y + box.pad_top
        assert np.all(in_input[:, 0::2] <= size[1])
        assert np.all(in_input[:, 1::2] <= size[0])
        np.testing.assert_allclose(unletterbox_boxes(in_input, box), original, atol=1e-3)

    def test_frame_corners_land_on_the_padding_edges(self) -> None:
        _, box = letterbox(np.zeros((480, 640, 3), np.uint8), (640, 640))
        corners = np.array([[0, 80, 640, 560]], np.float32)
        np.testing.assert_allclose(unletterbox_boxes(corners, box), [[0, 0, 640, 480]])

    def test_boxes_spilling_into_the_padding_are_clipped(self) -> None:
        _, box = letterbox(np.zeros((480, 640, 3), np.uint8), (640, 640))
        spill = np.array([[-10, 0, 700, 640]], np.float32)
        np.testing.assert_allclose(unletterbox_boxes(spill, box), [[0, 0, 640, 480]])
        unclipped = unletterbox_boxes(spill, box, clip=False)
        np.testing.assert_allclose(unclipped, [[-10, -80, 700, 560]])


def reference_bilinear(
    frame: npt.NDArray[np.uint8], height: int, width: int
) -> npt.NDArray[np.float32]:
    """Half-pixel-centred bilinear resize, one output pixel at a time, as CHW in 0..1."""
    src_h, src_w = frame.shape[:2]
    out = np.zeros((3, height, width), np.float32)
    for y in range(height):
        sy = min(max((y + 0.5) * src_h / height - 0.5, 0.0), src_h - 1)
        y0 = int(sy)
        y1, wy = min(y0 + 1, src_h - 1), sy - y0
        for x in range(width):
            sx = min(max((x + 0.5) * src_w / width - 0.5, 0.0), src_w - 1)
            x0 = int(sx)
            x1, wx = min(x0 + 1, src_w - 1), sx - x0
            top = frame[y0, x0] * (1 - wx) + frame[y0, x1] * wx
            bottom = frame[y1, x0] * (1 - wx) + frame[y1, x1] * wx
            out[:, y, x] = (top * (1 - wy) + bottom * wy) / 255
    return out
