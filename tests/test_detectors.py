"""Detector backends on real packaged photos: mediapipe face/hands with their shipped models, YOLO
through ultralytics with random-weight checkpoints saved the way ultralytics saves them (the real
face/hand weights cannot be downloaded here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from adetailer.detection import Detections
from adetailer.mediapipe_detector import MediapipeFaceDetector, MediapipeHandDetector
from adetailer.yolo_detector import YoloDetector, find_yolo_weights

os.environ["YOLO_OFFLINE"] = "true"
os.environ["YOLO_AUTOINSTALL"] = "false"

ROOT = Path(__file__).resolve().parent.parent
GREY = Image.new("RGB", (320, 240), (128, 128, 128))


def ultralytics_asset(name: str) -> Image.Image:
    import ultralytics

    return Image.open(Path(ultralytics.__file__).parent / "assets" / name)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def face_detectors() -> dict[int, MediapipeFaceDetector]:
    return {selection: MediapipeFaceDetector(selection) for selection in (0, 1)}


@pytest.fixture(scope="module")
def hand_detector() -> MediapipeHandDetector:
    return MediapipeHandDetector()


def assert_well_formed(found: Detections, size: tuple[int, int], backend: str) -> None:
    """Matching lengths, boxes inside the image, and masks of image size that are 0 outside
    their box (a filled box, or a segment within it)."""
    assert isinstance(found, Detections) and found.backend == backend
    assert len(found.boxes) == len(found.masks) == len(found.scores) == len(found)
    for (x1, y1, x2, y2), mask, score in zip(found.boxes, found.masks, found.scores, strict=True):
        assert all(isinstance(v, int) for v in (x1, y1, x2, y2)) and isinstance(score, float)
        assert 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]
        assert mask.mode == "L" and mask.size == size
        pixels = np.asarray(mask)
        assert set(np.unique(pixels)) <= {0, 255}
        outside = pixels.copy()
        outside[y1:y2, x1:x2] = 0
        assert not outside.any()


def is_filled_box(mask: Image.Image, box: tuple[int, int, int, int]) -> bool:
    x1, y1, x2, y2 = box
    return bool((np.asarray(mask)[y1:y2, x1:x2] == 255).all())


def test_modules_import_without_heavy_dependencies() -> None:
    """Importing the backends must not pay for mediapipe, cv2, ultralytics or torch."""
    code = (
        "import sys; import adetailer.mediapipe_detector, adetailer.yolo_detector; "
        "print(sorted(m for m in ('mediapipe', 'cv2', 'ultralytics', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("selection, name", [(0, "mediapipe_face_short"), (1, "mediapipe_face_full")])
def test_mediapipe_face_finds_astronaut(face_detectors, astronaut, selection: int, name: str) -> None:
    found = face_detectors[selection].detect(astronaut, 0.3)
    assert_well_formed(found, astronaut.size, name)
    assert len(found) == 1 and found.scores[0] > 0.5
    x1, y1, x2, y2 = found.boxes[0]
    width, height = astronaut.size
    assert 0.30 <= x1 / width < x2 / width <= 0.58
    assert 0.08 <= y1 / height < y2 / height <= 0.37
    assert is_filled_box(found.masks[0], found.boxes[0])


@pytest.mark.parametrize("selection", [0, 1])
def test_mediapipe_face_confidence_filters(face_detectors, astronaut, selection: int) -> None:
    detector = face_detectors[selection]
    score = detector.detect(astronaut, 0.3).scores[0]
    assert len(detector.detect(astronaut, min(1.0, score + 0.01))) == 0
    assert len(detector.detect(astronaut, score)) == 1


@pytest.mark.parametrize("selection", [0, 1])
def test_mediapipe_face_grey_image_has_none(face_detectors, selection: int) -> None:
    found = face_detectors[selection].detect(GREY, 0.05)
    assert len(found) == 0 and found.masks == [] and found.scores == []


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_mediapipe_face_accepts_other_modes(face_detectors, astronaut, mode: str) -> None:
    found = face_detectors[0].detect(astronaut.convert(mode), 0.3)
    assert_well_formed(found, astronaut.size, "mediapipe_face_short")
    assert len(found) == 1


def test_mediapipe_face_reuses_its_graph(face_detectors, astronaut) -> None:
    detector = face_detectors[1]
    graph = detector._solution
    first, second = detector.detect(astronaut, 0.3), detector.detect(astronaut, 0.3)
    assert detector._solution is graph and first.boxes == second.boxes


def test_mediapipe_face_rejects_unknown_model() -> None:
    with pytest.raises(ValueError):
        MediapipeFaceDetector(2)


def test_mediapipe_hands_finds_pointing_hand_in_zidane(hand_detector) -> None:
    """The man on the right of zidane.jpg points with his hand at pixels ~(1003..1146, 415..479)."""
    image = ultralytics_asset("zidane.jpg")
    found = hand_detector.detect(image, 0.5)
    assert_well_formed(found, image.size, "mediapipe_hands")
    assert len(found) == 1 and found.scores[0] > 0.9
    x1, y1, x2, y2 = found.boxes[0]
    assert 940 <= x1 <= 1003 and 1146 <= x2 <= 1210 and 360 <= y1 <= 415 and 479 <= y2 <= 540
    assert is_filled_box(found.masks[0], found.boxes[0])
    assert len(hand_detector.detect(image, min(1.0, found.scores[0] + 0.01))) == 0


def test_mediapipe_hands_none_where_there_are_none(hand_detector, astronaut) -> None:
    assert len(hand_detector.detect(GREY, 0.0)) == 0
    assert len(hand_detector.detect(astronaut.convert("RGBA"), 0.0)) == 0


@pytest.fixture(scope="module")
def yolo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-weight checkpoints written by ultralytics' own ``Model.save``, i.e. the same
    checkpoint dict layout as the published .pt files."""
    import torch
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("yolo")
    torch.manual_seed(0)
    YOLO("yolov8n.yaml").save(folder / "face_yolov8n.pt")
    YOLO("yolov8n-seg.yaml").save(folder / "person_yolov8n-seg.pt")
    return folder


def test_yolo_box_model(yolo_folder: Path) -> None:
    path = find_yolo_weights(yolo_folder, "face")
    assert path == yolo_folder / "face_yolov8n.pt"
    detector = YoloDetector(path)
    assert detector.name == "face_yolov8n"
    image = ultralytics_asset("bus.jpg")
    found = detector.detect(image, 0.0001)
    assert_well_formed(found, image.size, "face_yolov8n")
    assert len(found) > 0  # seeded random weights score some boxes above 0.0001 on this photo
    assert all(score >= 0.0001 for score in found.scores)
    assert all(is_filled_box(mask, box) for mask, box in zip(found.masks, found.boxes, strict=True))


def test_yolo_segmentation_model(yolo_folder: Path) -> None:
    detector = YoloDetector(find_yolo_weights(yolo_folder, "person"))
    assert detector.name == "person_yolov8n-seg"
    image = ultralytics_asset("bus.jpg").convert("RGBA")
    found = detector.detect(image, 0.0001)
    assert_well_formed(found, image.size, "person_yolov8n-seg")
    assert len(found) > 0  # seeded random weights score some segments above 0.0001 on this photo
    assert not all(is_filled_box(mask, box) for mask, box in zip(found.masks, found.boxes, strict=True))


def test_yolo_masks_come_from_segments_and_are_resized() -> None:
    """Deterministic check of the segment path that random weights can only exercise by luck."""
    segment = np.zeros((4, 4), dtype=np.uint8)
    segment[1:3, 0:2] = 1  # left half of rows 1-2 -> x 0..4, y 2..6 at 8x8
    tensor = lambda array: SimpleNamespace(cpu=lambda: SimpleNamespace(numpy=lambda: np.asarray(array)))
    result = SimpleNamespace(
        boxes=SimpleNamespace(xyxy=tensor([[0.0, 1.5, 4.2, 6.0], [0, 0, 8, 8]]), conf=tensor([0.9, 0.1])),
        masks=SimpleNamespace(data=tensor(np.stack([segment, segment]))),
    )
    detector = YoloDetector.__new__(YoloDetector)
    detector.name = "fake-seg"
    found = detector._to_detections(result, (8, 8), 0.5)
    assert found.boxes == [(0, 1, 5, 6)] and found.scores == [pytest.approx(0.9)]
    expected = np.zeros((8, 8), dtype=np.uint8)
    expected[2:6, 0:4] = 255
    assert np.array_equal(np.asarray(found.masks[0]), expected)


def test_yolo_refuses_anything_but_an_existing_checkpoint(tmp_path: Path) -> None:
    """A missing name would make ultralytics try to download it; non-.pt is not a checkpoint."""
    with pytest.raises(FileNotFoundError):
        YoloDetector(tmp_path / "face_yolov8n.pt")
    (tmp_path / "face.onnx").write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        YoloDetector(tmp_path / "face.onnx")


def touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_find_yolo_weights_prefers_smallest_model(tmp_path: Path) -> None:
    folder = touch(
        tmp_path,
        "face_yolov8x.pt", "face_yolov8m.pt", "face_yolov8s.pt", "face_yolov8l.pt", "face_yolov8n_v2.pt",
        "face_yolov8n.pt", "face_yolov9c.pt", "hand_yolov8s.pt", "hand_yolov9c.pt", "face_notes.txt",
    )
    (folder / "face_dir.pt").mkdir()
    assert find_yolo_weights(folder, "face") == folder / "face_yolov8n.pt"
    assert find_yolo_weights(folder, "hand") == folder / "hand_yolov8s.pt"


@pytest.mark.parametrize(
    "names, expected",
    [
        (("face_yolov8l.pt", "face_yolov8m.pt", "face_yolov8x.pt"), "face_yolov8m.pt"),
        (("face_yolov8x.pt", "face_custom.pt"), "face_yolov8x.pt"),
        (("face_yolov9c.pt", "face_yolov8l.pt"), "face_yolov9c.pt"),
        (("face_b.pt", "face_a.pt"), "face_a.pt"),
    ],
)
def test_find_yolo_weights_order(tmp_path: Path, names: tuple[str, ...], expected: str) -> None:
    assert find_yolo_weights(touch(tmp_path, *names), "face") == tmp_path / expected


def test_find_yolo_weights_none_cases(tmp_path: Path) -> None:
    assert find_yolo_weights(tmp_path / "missing", "face") is None
    assert find_yolo_weights(tmp_path, "face") is None
    touch(tmp_path, "hand_yolov8n.pt", "face_yolov8n.onnx", "myface_yolov8n.pt")
    assert find_yolo_weights(tmp_path, "face") is None
