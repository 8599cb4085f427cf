"""Face and hand detectors on Google mediapipe, whose models ship inside the wheel (no download).

mediapipe and cv2 are imported in the constructors only, so importing this module stays cheap for
requests that never ask for a detailer pass.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from adetailer.detection import Box, Detections
from adetailer.mask import box_mask, clip_box

# The graph's own score gate. Set low so one built graph serves every per-call ``confidence``
# (filtered here); at this floor the astronaut's box is identical to the one at the 0.5 default.
FACE_GRAPH_FLOOR = 0.05

# The legacy hands solution exposes no detection score, only handedness (a left/right
# probability, never below 0.5), so these fixed gates are what rejects non-hands. The palm gate is
# far below mediapipe's 0.5 default, which misses the clear pointing hand in ultralytics' zidane.jpg
# (palm score ~0.3); the landmark model's hand-presence gate, kept at its 0.5 default, is what
# turned down every non-hand tried (cat, coffee cup, astronaut, grey) even with the palm gate at 0.1.
HAND_DETECTION_GATE = 0.1
HAND_PRESENCE_GATE = 0.5

# Landmarks sit on joint centres; widen the box so fingertips and the palm edge are inside.
HAND_MARGIN = 0.15

FACE_MODELS = {0: "mediapipe_face_short", 1: "mediapipe_face_full"}


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """mediapipe only accepts contiguous uint8 HxWx3, so RGBA, L, P and 16-bit inputs are
    converted first."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def build_detections(
    candidates: Iterable[tuple[Sequence[float], float]],
    size: tuple[int, int],
    confidence: float,
    backend: str,
) -> Detections:
    """Shared tail of both detectors: filter by score, clip, and add box masks."""
    boxes: list[Box] = []
    scores: list[float] = []
    for (x1, y1, x2, y2), score in candidates:
        box = clip_box(x1, y1, x2, y2, size)
        if score >= confidence and box is not None:
            boxes.append(box)
            scores.append(float(score))
    masks = [box_mask(box, size) for box in boxes]
    return Detections(boxes=boxes, masks=masks, scores=scores, backend=backend)


class MediapipeFaceDetector:
    """mediapipe face detection; ``model_selection`` 0 is the short-range model (faces within ~2 m,
    i.e. portraits), 1 the full-range one (small faces in wider shots)."""

    def __init__(self, model_selection: int = 0) -> None:
        if model_selection not in FACE_MODELS:
            raise ValueError(f"model_selection must be 0 or 1, got {model_selection!r}")
        from mediapipe.python.solutions.face_detection import FaceDetection

        self.name = FACE_MODELS[model_selection]
        # Built once: graph construction costs far more than one inference.
        self._solution = FaceDetection(
            model_selection=model_selection, min_detection_confidence=FACE_GRAPH_FLOOR
        )
        # A mediapipe graph is a stateful stream; concurrent process() calls would interleave.
        self._lock = threading.Lock()

    def detect(self, image: Image.Image, confidence: float) -> Detections:
        """Faces scoring at least ``confidence``, each masked by its filled box."""
        with self._lock:
            result = self._solution.process(to_rgb_array(image))
        width, height = image.size
        candidates = [
            (face_box(detection, width, height), detection.score[0])
            for detection in result.detections or []
        ]
        return build_detections(candidates, image.size, confidence, self.name)


def face_box(detection: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """mediapipe reports a relative (xmin, ymin, width, height) box; callers want pixels."""
    rel = detection.location_data.relative_bounding_box
    x1, y1 = rel.xmin * width, rel.ymin * height
    return x1, y1, x1 + rel.width * width, y1 + rel.height * height


class MediapipeHandDetector:
    """mediapipe hands (palm detection, then 21 landmarks per hand) in still-image mode."""

    name = "mediapipe_hands"

    def __init__(self, max_hands: int = 4) -> None:
        from mediapipe.python.solutions.hands import Hands

        # static_image_mode: every call is an unrelated image, so never track from the last one.
        self._solution = Hands(
            static_image_mode=True,
            max_num_hands=max_hands,
            min_detection_confidence=HAND_DETECTION_GATE,
            min_tracking_confidence=HAND_PRESENCE_GATE,
        )
        self._lock = threading.Lock()

    def detect(self, image: Image.Image, confidence: float) -> Detections:
        """Hands whose handedness score is at least ``confidence``, each masked by its filled
        box around the landmarks."""
        with self._lock:
            result = self._solution.process(to_rgb_array(image))
        width, height = image.size
        hands = zip(result.multi_hand_landmarks or [], result.multi_handedness or [], strict=True)
        candidates = [
            (hand_box(landmarks, width, height), handedness.classification[0].score)
            for landmarks, handedness in hands
        ]
        return build_detections(candidates, image.size, confidence, self.name)


def hand_box(landmarks: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """The landmarks' extent in pixels, widened by ``HAND_MARGIN`` of its longer side; clipping
    happens later, since landmarks may lie off-image."""
    xs = [point.x * width for point in landmarks.landmark]
    ys = [point.y * height for point in landmarks.landmark]
    margin = HAND_MARGIN * max(max(xs) - min(xs), max(ys) - min(ys))
    return min(xs) - margin, min(ys) - margin, max(xs) + margin, max(ys) + margin


MESH_MODELS = ("mediapipe_face_mesh", "mediapipe_face_mesh_eyes_only")


class MediapipeFaceMeshDetector:
    """mediapipe face mesh (468 landmarks per face): the mask is the convex hull of the face's
    landmarks, or with ``eyes_only`` the hulls of its two eyes, as the extension draws them.

    The mesh gives no per-face score: ``confidence`` is the graph's detection gate, one graph per
    value asked for (building one costs far more than a call), and each face found scores 1.0.
    """

    def __init__(self, eyes_only: bool = False, max_faces: int = 20) -> None:
        from mediapipe.python.solutions import face_mesh

        self.name = MESH_MODELS[eyes_only]
        self._module = face_mesh
        self._eyes_only = eyes_only
        self._max_faces = max_faces
        self._graphs: dict[float, Any] = {}
        self._lock = threading.Lock()

    def _graph(self, confidence: float) -> Any:
        if confidence not in self._graphs:
            self._graphs[confidence] = self._module.FaceMesh(
                static_image_mode=True, max_num_faces=self._max_faces, refine_landmarks=True,
                min_detection_confidence=max(confidence, FACE_GRAPH_FLOOR))
        return self._graphs[confidence]

    def detect(self, image: Image.Image, confidence: float) -> Detections:
        import cv2

        with self._lock:
            result = self._graph(confidence).process(to_rgb_array(image))
        width, height = image.size
        boxes: list[Box] = []
        masks: list[Image.Image] = []
        regions = ([self._module.FACEMESH_LEFT_EYE, self._module.FACEMESH_RIGHT_EYE] if self._eyes_only
                   else [self._module.FACEMESH_FACE_OVAL])
        for face in result.multi_face_landmarks or []:
            points = np.array([(point.x * width, point.y * height) for point in face.landmark], dtype=np.float32)
            mask = np.zeros((height, width), np.uint8)
            for connections in regions:
                indices = sorted({index for pair in connections for index in pair})
                hull = cv2.convexHull(points[indices].round().astype(np.int32))
                cv2.fillConvexPoly(mask, hull, 255)
            box = Image.fromarray(mask, mode="L").getbbox()
            if box is not None:
                boxes.append(box)
                masks.append(Image.fromarray(mask, mode="L"))
        return Detections(boxes=boxes, masks=masks, scores=[1.0] * len(boxes), backend=self.name)
