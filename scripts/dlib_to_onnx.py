"""Build-time converter: dlib's face recognition ResNet (.dat) -> ONNX with the same numbers.

Reads dlib's own serialisation format with numpy (no dlib needed) against the known layer
stack of ``dlib_face_recognition_resnet_model_v1`` and writes an ONNX graph (opset 13) that uses
only Transpose, Conv, Mul, Add, Relu, MaxPool, AveragePool, Pad, GlobalAveragePool, Flatten and
MatMul, which onnxruntime and OpenVINO both run.

Graph contract (also returned by ``convert`` for the model manifest):
  input  ``chip``: float32 [batch, 150, 150, 3], NHWC, RGB, already normalised the way dlib's
         ``input_rgb_image_sized`` does it: ``(pixel - mean[c]) / 256`` with the means read from
         the file (122.782, 117.001, 104.298).
  output ``descriptor``: float32 [batch, 128], dlib's raw descriptor (NOT L2-normalised).

Usage: python scripts/dlib_to_onnx.py DAT OUT.onnx
Build-time dependencies only: numpy and onnx.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OPSET = 13
IR_VERSION = 8  # readable by onnxruntime >= 1.10 and every OpenVINO the project supports
INPUT_NAME = "chip"
OUTPUT_NAME = "descriptor"


class DlibFormatError(ValueError):
    """The .dat file is not the dlib network this converter knows."""


# --------------------------------------------------------------------------- dlib stream reader


class _Reader:
    """Reads the primitives of dlib/serialize.h from an in-memory byte string."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"unexpected end of file at byte {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int_(self) -> int:
        # dlib packs integers as: control byte (bit 7 = negative, low 4 bits = byte count),
        # then that many little-endian magnitude bytes.
        ctrl = self._take(1)[0]
        size = ctrl & 0x0F
        if size == 0 or size > 8 or ctrl & 0x70:
            raise DlibFormatError(f"bad integer control byte 0x{ctrl:02x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if ctrl & 0x80 else value

    def string(self, max_len: int = 64) -> str:
        # Every string in a dlib network file is a short layer/version tag; a long one means the
        # stream is not what we think it is, so fail before reading megabytes as text.
        length = self.int_()
        if not 0 <= length <= max_len:
            raise DlibFormatError(f"string of length {length} at byte {self.pos}: not a dlib network tag")
        return self._take(length).decode("latin-1")

    def float_(self) -> float:
        # dlib writes a float as an int64 mantissa and an int16 exponent; it rebuilds it with
        # ldexp((float)mantissa, exponent), so round the mantissa to float32 first as dlib does.
        mantissa = self.int_()
        exponent = self.int_()
        if exponent >= 32000:
            return {32000: np.inf, 32001: -np.inf}.get(exponent, np.nan)
        return float(np.float32(np.ldexp(np.float32(mantissa), exponent)))

    def bool_(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool byte {ch!r} at byte {self.pos - 1}")
        return ch == b"1"

    def expect_version(self, allowed: tuple[int, ...], what: str) -> int:
        version = self.int_()
        if version not in allowed:
            raise DlibFormatError(f"{what}: version {version}, expected one of {allowed}")
        return version

    def tensor(self) -> np.ndarray:
        self.expect_version((2,), "resizable_tensor")
        shape = tuple(self.int_() for _ in range(4))  # num_samples, k, nr, nc
        count = int(np.prod(shape))
        # Tensor payloads are raw little-endian IEEE float32, not dlib's packed floats.
        return np.frombuffer(self._take(4 * count), dtype="<f4").reshape(shape).astype(np.float32)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.expect_version((1,), "alias_tensor")
        return tuple(self.int_() for _ in range(4))  # type: ignore[return-value]


# --------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class Layer:
    """One dlib layer, listed from the input towards the loss."""

    kind: str  # input, con, affine, relu, max_pool, avg_pool, add_prev, tag, skip, gap, fc, loss
    args: tuple[int, ...] = ()


def _block(n: int, stride: int) -> list[Layer]:
    # dlib: BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>, BN = affine at test time
    return [
        Layer("con", (n, 3, 3, stride)),
        Layer("affine"),
        Layer("relu"),
        Layer("con", (n, 3, 3, 1)),
        Layer("affine"),
    ]


def _ares(n: int) -> list[Layer]:
    # relu<add_prev1<block<N,1,tag1<SUBNET>>>>
    return [Layer("tag", (1,)), *_block(n, 1), Layer("add_prev", (1,)), Layer("relu")]


def _ares_down(n: int) -> list[Layer]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,2,tag1<SUBNET>>>>>>>
    return [
        Layer("tag", (1,)),
        *_block(n, 2),
        Layer("tag", (2,)),
        Layer("skip", (1,)),
        Layer("avg_pool", (2, 2, 2)),
        Layer("add_prev", (2,)),
        Layer("relu"),
    ]


def face_resnet_v1_layers() -> list[Layer]:
    """The layer stack of dlib's anet_type from dnn_face_recognition_ex.cpp, input first."""
    layers = [
        Layer("input"),
        Layer("con", (32, 7, 7, 2)),
        Layer("affine"),
        Layer("relu"),
        Layer("max_pool", (3, 3, 2)),
    ]
    layers += _ares(32) * 3  # alevel4
    layers += _ares_down(64) + _ares(64) * 3  # alevel3
    layers += _ares_down(128) + _ares(128) * 2  # alevel2
    layers += _ares_down(256) + _ares(256) * 2  # alevel1
    layers += _ares_down(256)  # alevel0
    return layers + [Layer("gap"), Layer("fc", (128,)), Layer("loss")]


# --------------------------------------------------------------------------- parsing


@dataclass
class ParsedNet:
    layers: list[Layer]
    weights: list[dict[str, np.ndarray]] = field(default_factory=list)  # one dict per layer
    means: tuple[float, float, float] = (0.0, 0.0, 0.0)
    input_size: tuple[int, int] = (0, 0)
    detail_versions: set[str] = field(default_factory=set)


def _read_input(r: _Reader, net: ParsedNet) -> None:
    name = r.string()
    if name != "input_rgb_image_sized":
        raise DlibFormatError(f"input layer is {name!r}, expected input_rgb_image_sized")
    net.means = (r.float_(), r.float_(), r.float_())
    net.input_size = (r.int_(), r.int_())
    net.detail_versions.add(name)


def _read_con(r: _Reader, layer: Layer) -> dict[str, np.ndarray]:
    version = r.string()
    if version not in ("con_4", "con_5"):
        raise DlibFormatError(f"expected con_4/con_5, found {version!r}")
    params = r.tensor().reshape(-1)
    num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x = (r.int_() for _ in range(7))
    filters = r.alias_tensor()
    biases = r.alias_tensor()
    for _ in range(4):  # learning-rate and weight-decay multipliers: training only
        r.float_()
    use_bias = r.bool_() if version == "con_5" else True
    want_n, want_k, _, want_s = layer.args
    want_pad = 0 if want_s != 1 else want_k // 2  # dlib's default padding rule
    got = (num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x)
    if got != (want_n, want_k, want_k, want_s, want_s, want_pad, want_pad):
        raise DlibFormatError(f"con layer {got} does not match the expected {layer.args}")
    n_w = int(np.prod(filters))
    w = params[:n_w].reshape(filters)
    b = params[n_w : n_w + num_filters] if use_bias and np.prod(biases) else np.zeros(num_filters, np.float32)
    return {"w": w, "b": b.astype(np.float32)}


def _read_affine(r: _Reader) -> dict[str, np.ndarray]:
    version = r.string()
    if version == "bn_con2":
        return _affine_from_bn(r)
    if version not in ("affine_", "affine_2"):
        raise DlibFormatError(f"expected affine_/affine_2/bn_con2, found {version!r}")
    params = r.tensor().reshape(-1)
    gamma_shape, _beta_shape = r.alias_tensor(), r.alias_tensor()
    mode = r.int_()
    disabled = r.bool_() if version == "affine_2" else False
    if mode != 0:
        raise DlibFormatError("affine layer is not in CONV_MODE")
    if disabled:
        return {}
    k = int(np.prod(gamma_shape))
    return {"gamma": params[:k].copy(), "beta": params[k : 2 * k].copy()}


def _affine_from_bn(r: _Reader) -> dict[str, np.ndarray]:
    # Same float32 arithmetic dlib uses when it turns a bn_con into an affine_ at load time.
    params = r.tensor().reshape(-1)
    gamma_shape, _ = r.alias_tensor(), r.alias_tensor()
    r.tensor(), r.tensor()  # batch means and inverse stds: training only
    running_means = r.tensor().reshape(-1)
    running_vars = r.tensor().reshape(-1)
    r.int_(), r.int_()  # num_updates, running_stats_window_size
    for _ in range(4):
        r.float_()
    eps = np.float32(r.float_())
    k = int(np.prod(gamma_shape))
    g = params[:k] / np.sqrt(running_vars + eps)
    return {"gamma": g.astype(np.float32), "beta": (params[k : 2 * k] - g * running_means).astype(np.float32)}


def _read_pool(r: _Reader, layer: Layer, name: str) -> None:
    version = r.string()
    if version != f"{name}_2":
        raise DlibFormatError(f"expected {name}_2, found {version!r}")
    got = tuple(r.int_() for _ in range(6))  # nr, nc, stride_y, stride_x, pad_y, pad_x
    if layer.kind == "gap":
        want = (0, 0, 1, 1, 0, 0)
    else:
        k, s = layer.args[0], layer.args[2]
        want = (k, k, s, s, 0, 0) if s != 1 else (k, k, s, s, k // 2, k // 2)
    if got != want:
        raise DlibFormatError(f"{name} layer {got} does not match the expected {want}")


def _read_fc(r: _Reader, layer: Layer) -> dict[str, np.ndarray]:
    version = r.string()
    if version not in ("fc_2", "fc_3"):
        raise DlibFormatError(f"expected fc_2/fc_3, found {version!r}")
    num_outputs, num_inputs = r.int_(), r.int_()
    params = r.tensor().reshape(-1)
    weights = r.alias_tensor()
    r.alias_tensor()  # biases alias, unused in FC_NO_BIAS mode
    bias_mode = r.int_()
    for _ in range(4):
        r.float_()
    if version == "fc_3":
        r.bool_()
    if bias_mode != 1 or num_outputs != layer.args[0] or weights[:2] != (num_inputs, num_outputs):
        raise DlibFormatError(
            f"fc layer (outputs={num_outputs}, bias_mode={bias_mode}) is not fc_no_bias<128>"
        )
    # dlib computes output = input x W with W stored row-major as [num_inputs, num_outputs].
    return {"w": params[: num_inputs * num_outputs].reshape(num_inputs, num_outputs).copy()}


def _read_details(r: _Reader, layer: Layer) -> dict[str, np.ndarray]:
    if layer.kind == "con":
        return _read_con(r, layer)
    if layer.kind == "affine":
        return _read_affine(r)
    if layer.kind == "fc":
        return _read_fc(r, layer)
    if layer.kind in ("max_pool", "avg_pool", "gap"):
        _read_pool(r, layer, "max_pool" if layer.kind == "max_pool" else "avg_pool")
        return {}
    expected = {"relu": "relu_", "add_prev": "add_prev_"}[layer.kind]
    version = r.string()
    if version != expected:
        raise DlibFormatError(f"expected {expected}, found {version!r}")
    return {}


def _read_add_layer_tail(r: _Reader, over_input: bool, version: int) -> None:
    # Runtime state that dlib stores after each layer's details: flags and cached tensors.
    r.bool_(), r.bool_(), r.bool_()
    r.tensor(), r.tensor()
    if not over_input and version == 2:
        r.tensor()  # params_grad
    if over_input:
        r.tensor()  # grad_final
        if version >= 3:
            r.int_()  # sample_expansion_factor


def parse_dat(data: bytes, layers: list[Layer]) -> ParsedNet:
    """Parse a dlib network stream laid out as ``layers`` (input first, loss last)."""
    r = _Reader(data)
    net = ParsedNet(layers=layers, weights=[{} for _ in layers])
    r.expect_version((1,), "add_loss_layer")
    loss_name = r.string()
    if loss_name not in ("loss_metric_", "loss_metric_2"):
        raise DlibFormatError(f"loss layer is {loss_name!r}, expected loss_metric_")
    if loss_name == "loss_metric_2":
        r.float_(), r.float_()  # margin, distance threshold: training only
    body = layers[1:-1]  # between input and loss; dlib writes outer layers' headers first
    versions: list[int] = []
    for i, layer in enumerate(reversed(body)):
        innermost = i == len(body) - 1
        if layer.kind in ("tag", "skip"):
            versions.append(r.expect_version((1,), layer.kind))
        else:
            versions.append(r.expect_version((2, 3) if innermost else (1, 2), f"add_layer<{layer.kind}>"))
    _read_input(r, net)
    for idx, (layer, version) in enumerate(zip(body, reversed(versions), strict=True)):
        if layer.kind in ("tag", "skip"):
            continue
        net.weights[idx + 1] = _read_details(r, layer)
        _read_add_layer_tail(r, over_input=idx == 0, version=version)
    if r.pos != len(data):
        raise DlibFormatError(f"{len(data) - r.pos} trailing bytes after the network")
    return net


# --------------------------------------------------------------------------- ONNX graph


class _GraphBuilder:
    """Emits ONNX nodes while tracking each tensor's static [C, H, W] shape."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.shapes: dict[str, tuple[int, int, int]] = {}
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], shape: tuple[int, int, int] | None, **attrs) -> str:
        from onnx import helper

        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        if shape is not None:
            self.shapes[out] = shape
        return out


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return 1 + (size + 2 * p - k) // s


def _emit_add_prev(g: _GraphBuilder, a: str, b: str) -> str:
    # dlib's add_prev sizes its output to the larger of both inputs in every dimension and
    # treats missing elements as zero: pad channels and bottom/right rows and columns.
    target = tuple(max(x, y) for x, y in zip(g.shapes[a], g.shapes[b], strict=True))
    padded = []
    for t in (a, b):
        extra = [m - s for m, s in zip(target, g.shapes[t], strict=True)]
        if any(extra):
            pads = np.array([0, 0, 0, 0, 0, *extra], dtype=np.int64)
            t = g.node("Pad", [t, g.const("pads", pads)], target, mode="constant")
        padded.append(t)
    return g.node("Add", padded, target)


def _emit_layer(
    g: _GraphBuilder, layer: Layer, w: dict[str, np.ndarray], cur: str, tags: dict[int, str]
) -> str:
    c, h, wd = g.shapes[cur]
    if layer.kind == "con":
        n, k, _, s = layer.args
        p = 0 if s != 1 else k // 2
        shape = (n, _conv_out(h, k, s, p), _conv_out(wd, k, s, p))
        ins = [cur, g.const("conv_w", w["w"]), g.const("conv_b", w["b"])]
        return g.node("Conv", ins, shape, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])
    if layer.kind == "affine":
        if not w:
            return cur
        scaled = g.node("Mul", [cur, g.const("gamma", w["gamma"].reshape(1, -1, 1, 1))], (c, h, wd))
        return g.node("Add", [scaled, g.const("beta", w["beta"].reshape(1, -1, 1, 1))], (c, h, wd))
    if layer.kind == "relu":
        return g.node("Relu", [cur], (c, h, wd))
    if layer.kind in ("max_pool", "avg_pool"):
        k, _, s = layer.args
        op = "MaxPool" if layer.kind == "max_pool" else "AveragePool"
        shape = (c, _conv_out(h, k, s, 0), _conv_out(wd, k, s, 0))
        return g.node(op, [cur], shape, kernel_shape=[k, k], strides=[s, s])
    if layer.kind == "tag":
        tags[layer.args[0]] = cur
        return cur
    if layer.kind == "skip":
        return tags[layer.args[0]]
    if layer.kind == "add_prev":
        return _emit_add_prev(g, cur, tags[layer.args[0]])
    raise DlibFormatError(f"no ONNX mapping for layer kind {layer.kind!r}")


def build_onnx(net: ParsedNet):
    """Turn a parsed network into an ONNX ModelProto (NHWC normalised input, raw descriptor)."""
    from onnx import TensorProto, helper

    height, width = net.input_size
    g = _GraphBuilder()
    cur = g.node("Transpose", [INPUT_NAME], (3, height, width), perm=[0, 3, 1, 2])
    tags: dict[int, str] = {}
    for layer, w in zip(net.layers[1:], net.weights[1:], strict=True):
        if layer.kind == "gap":
            break
        cur = _emit_layer(g, layer, w, cur, tags)
    pooled = g.node("GlobalAveragePool", [cur], None)
    flat = g.node("Flatten", [pooled], None, axis=1)
    fc_w = net.weights[-2]["w"]
    g.nodes.append(helper.make_node("MatMul", [flat, g.const("fc_w", fc_w)], [OUTPUT_NAME], name="fc"))
    graph = helper.make_graph(
        g.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", height, width, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", fc_w.shape[1]])],
        g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dlib_to_onnx"
    )
    model.ir_version = IR_VERSION
    model.doc_string = (
        "dlib face recognition ResNet v1 (public domain). Input NHWC RGB float32, normalised as "
        "(pixel - mean) / 256; output raw 128-D descriptor, not L2-normalised."
    )
    return model


# --------------------------------------------------------------------------- public entry points


def convert(dat_path: Path, out_path: Path) -> dict:
    """Convert ``dat_path`` to ONNX at ``out_path``; return the preprocessing facts for the manifest."""
    import onnx

    net = parse_dat(Path(dat_path).read_bytes(), face_resnet_v1_layers())
    model = build_onnx(net)
    onnx.checker.check_model(model, full_check=True)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    size = net.input_size[0]
    return {
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_size": size,
        "input_shape": ["batch", size, size, 3],
        "layout": "NHWC",
        "color_order": "RGB",
        "dtype": "float32",
        "mean": [float(m) for m in net.means],
        "scale": 1.0 / 256.0,
        "normalization": "x = (pixel - mean[c]) * scale, pixel in 0..255",
        "output_dim": int(net.weights[-2]["w"].shape[1]),
        "l2_normalized": False,
        "opset": OPSET,
        "alignment": {
            "landmarks": "dlib shape_predictor_5_face_landmarks",
            "chip": "dlib.get_face_chip(img, shape, size=150, padding=0.25)",
            "chip_size": size,
            "padding": 0.25,
        },
        "dlib_same_person_euclidean_threshold": 0.6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dat", type=Path, help="dlib_face_recognition_resnet_model_v1.dat")
    parser.add_argument("out", type=Path, help="output .onnx path")
    args = parser.parse_args(argv)
    try:
        facts = convert(args.dat, args.out)
    except (OSError, DlibFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(facts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
