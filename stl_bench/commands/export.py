"""`stl-bench export`: a checkpoint to a checked ONNX file, or an ONNX file to a TensorRT engine (and either
to a Triton model repository)."""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

NAME = "export"
HELP = "export a checkpoint to ONNX (parity-checked, FP16 optional) or build a TensorRT engine"
DESCRIPTION = (
    "Export a checkpoint to ONNX with a dynamic batch, its preprocessing and class names in the file's "
    "metadata, and a parity check against PyTorch that must pass before the file is written. With an "
    "--output ending in .engine/.plan/.trt, build a TensorRT engine (from the checkpoint via ONNX, or from "
    "an exported .onnx file); --fp16 makes the graph (and so the engine) half precision with LayerNorm, "
    "softmax and reductions kept in FP32. --triton-repo DIR also writes a Triton Inference Server model "
    "repository for the exported file (or, given an exported .onnx/engine and no --output, only that)."
)
from stl_bench.commands import arguments as arg  # noqa: E402
from stl_bench.deploy.runner import ENGINE_SUFFIXES  # noqa: E402  (light: torch only)
log = logging.getLogger(__name__)
TRITON_DEFAULTS = {"name": None, "max_batch": 64, "instances": 1, "kind": "auto", "queue_delay_us": 2000,
                   "overwrite": False}


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got '{text}'")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", type=arg.model_source,
                        help="checkpoint (.pth/.pt/.safetensors), a model card name (`stl-bench models`) or, for an engine, an "
                        "exported .onnx file; omit with --model for random weights (smoke tests)")
    parser.add_argument("--output", "-o", type=Path, help="FILE.onnx, or FILE.engine for TensorRT (required, except "
                        "for `stl-bench export EXPORTED.onnx --triton-repo DIR`)")
    parser.add_argument("--model", help="architecture, if the checkpoint does not record it")
    parser.add_argument("--num-classes", type=arg.positive_int,
                        help="class count, if the checkpoint does not record it")
    parser.add_argument("--ema", action="store_true", help="export the checkpoint's EMA weights")
    parser.add_argument("--tokens", action="store_true",
                        help="also output token_logits (token-label models; needed for the fused STL head)")
    parser.add_argument("--fp16", action="store_true",
                        help="FP16 graph (FP32 inputs/outputs; LayerNorm, softmax, reductions in FP32); "
                             "the FP32 graph is kept as NAME.fp32.onnx")
    parser.add_argument("--img-size", type=arg.positive_int, help="export input size (default: the model's)")
    parser.add_argument("--opset", type=int, default=23,
                        help="ONNX opset (18..23); 23 writes token mixing as one ONNX Attention node, which "
                             "TensorRT parses from 10.14 on: use 20 for an older TensorRT")
    parser.add_argument("--batch-sizes", type=_int_list, default=[1, 2, 7], help="parity-check batch sizes")
    parser.add_argument("--atol", type=arg.non_negative_float, default=1e-4,
                        help="largest allowed |ONNX - PyTorch| (FP32 graph)")
    parser.add_argument("--min-agreement", type=arg.probability, default=0.99,
                        help="smallest allowed top-1 / token-argmax agreement of the FP16 graph on real images")
    parser.add_argument("--images", type=arg.existing_folder, help="folder of real images for the parity check "
                        "(default: scikit-learn's bundled digits)")
    parser.add_argument("--no-rewrites", action="store_true",
                        help="export the model's code exactly as traced (no folded positional encoding or layer "
                             "scales, no reordered channel attention, no Attention node); for comparisons")
    trt = parser.add_argument_group("TensorRT engine (--output FILE.engine)")
    trt.add_argument("--min-batch", type=arg.positive_int, default=1)
    trt.add_argument("--opt-batch", type=arg.positive_int, default=8)
    trt.add_argument("--max-batch", type=arg.positive_int, default=64)
    trt.add_argument("--workspace-gib", type=arg.positive_float, default=4.0, help="builder scratch memory limit")
    trt.add_argument("--timing-cache", type=arg.output_file, help="timing cache file, reused and updated across builds "
                     "(default: timing.cache beside the engine)")
    triton = parser.add_argument_group(
        "Triton Inference Server model repository (--triton-repo DIR)",
        "Write DIR/NAME/config.pbtxt and DIR/NAME/1/model.onnx (model.plan for an engine), inputs and outputs "
        "read from the exported graph; serve it with `tritonserver --model-repository DIR`.")
    triton.add_argument("--triton-repo", type=Path, metavar="DIR",
                        help="write a Triton model repository for the exported file; with an exported .onnx or "
                             "engine as the source and no --output, write only the repository")
    triton.add_argument("--triton-name", metavar="NAME",
                        help="model name and folder in the repository (default: the architecture)")
    triton.add_argument("--triton-max-batch", type=int, default=TRITON_DEFAULTS["max_batch"], metavar="N",
                        help="max_batch_size: the largest batch Triton's dynamic batcher forms (for an engine, "
                             "at most its --max-batch)")
    triton.add_argument("--triton-instances", type=int, default=TRITON_DEFAULTS["instances"], metavar="N",
                        help="model instances per device (instance_group count): batches run in parallel")
    triton.add_argument("--triton-kind", choices=("auto", "cpu", "gpu"), default=TRITON_DEFAULTS["kind"],
                        help="where instances run: auto = GPU for an engine, CPU for ONNX")
    triton.add_argument("--triton-queue-delay-us", type=int, default=TRITON_DEFAULTS["queue_delay_us"], metavar="N",
                        help="how long the batcher waits to fill a batch (max_queue_delay_microseconds): latency "
                             "traded for throughput; 0 sends what has arrived at once")
    triton.add_argument("--triton-overwrite", action="store_true",
                        help="replace the files of an existing DIR/NAME (other version folders are kept)")


def _load_model(args: argparse.Namespace):
    from stl_bench.errors import StlBenchError
    from stl_bench.fan.factory import create_model, create_model_from_checkpoint, trained_input_hw

    if args.source:
        model, info = create_model_from_checkpoint(Path(args.source), args.model, use_ema=args.ema,
                                                   num_classes=args.num_classes)
        if not args.img_size:
            hw, why = trained_input_hw(info)
            if hw:
                log.info("exporting at %dx%d (from %s)", hw[0], hw[1], why)
                args.img_size = hw
        return model, info.arch, info.class_names, info.sha256, f"{info.weights}:{Path(args.source).name}"
    if not args.model:
        raise StlBenchError("nothing to export: pass a checkpoint, or --model NAME for random weights")
    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    if args.img_size:
        kwargs["img_size"] = args.img_size
    log.warning("%s has random weights: no checkpoint was given", args.model)
    return create_model(args.model, **kwargs), args.model, None, "", "random-init"


def export_checked_onnx(args: argparse.Namespace, output: Path) -> Path:
    """Export, check parity (FP32, then FP16 if asked) in a scratch folder, then write into place."""
    from stl_bench.data.real_images import real_images
    from stl_bench.deploy.export_onnx import convert_fp16, export_onnx
    from stl_bench.deploy.graph_rewrites import GraphOptions
    from stl_bench.deploy.onnx_format import metadata_for
    from stl_bench.deploy.parity import check_parity
    from stl_bench.io import TEMP_MARK

    model, arch, class_names, sha256, weights = _load_model(args)
    if getattr(model, "has_token_head", False) and not args.tokens:
        log.info("%s is a token-label model: add --tokens to export token_logits (needed for the fused STL head)",
                 arch)
    meta = metadata_for(model, arch, tokens=args.tokens, class_names=class_names, checkpoint_sha256=sha256,
                        weights=weights, img_size=args.img_size)
    real = real_images(meta.data_config, max(32, *args.batch_sizes), args.images)
    options = GraphOptions.none() if args.no_rewrites else GraphOptions()
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", suffix=TEMP_MARK, dir=output.parent) as scratch:
        fp32 = export_onnx(model, Path(scratch) / "model.onnx", meta, opset=args.opset, options=options)
        checks = [(fp32, check_parity(model, fp32, batch_sizes=args.batch_sizes, atol=args.atol, real=real))]
        if args.fp16:
            fp16 = convert_fp16(fp32, Path(scratch) / "model.fp16.onnx")
            checks.append((fp16, check_parity(model, fp16, batch_sizes=args.batch_sizes, real=real,
                                              min_agreement=args.min_agreement)))
        final_names = [output.with_name(output.stem + ".fp32.onnx"), output] if args.fp16 else [output]
        _publish(checks, final_names, output)
    print(f"wrote {output}" + (f" and {output.stem}.fp32.onnx" if args.fp16 else ""))
    return output


def _publish(checks: list, final_names: list[Path], output: Path) -> None:
    """Print the parity tables; write the checked graphs to their final names only if all passed.

    A graph is re-saved rather than renamed: `save_onnx` writes it through `stl_bench.io`
    (fsynced, umask mode) and, for a graph over 2 GiB, gives its weights file the final
    name the graph must refer to.
    """
    import onnx

    from stl_bench.deploy.export_onnx import save_onnx
    from stl_bench.errors import StlBenchError

    for (_, report), name in zip(checks, final_names):
        report.path = str(name)
        print(report.table())
    failed = [r for _, r in checks if not r.passed]
    if failed:
        raise StlBenchError(f"{output}: parity check failed ({failed[0].reason}); nothing was written. "
                            "Raise --atol/--min-agreement only if the differences above are acceptable")
    for (path, _), name in zip(checks, final_names):
        save_onnx(onnx.load(str(path)), name)


def _check_triton_args(args: argparse.Namespace) -> None:
    """Refuse bad --triton-* values (and a missing tritonclient) before minutes of export work."""
    from stl_bench.errors import StlBenchError

    if args.triton_repo is None:
        stray = [f"--triton-{key.replace('_', '-')}" for key, default in TRITON_DEFAULTS.items()
                 if getattr(args, f"triton_{key}") != default]
        if stray:
            raise StlBenchError(f"{', '.join(stray)} only apply with --triton-repo DIR; add it or drop them")
        return
    from stl_bench.serve.triton_repo import check_repo_folder, check_target, default_name, import_model_config

    bad = [f"--triton-{flag} {value} (use 1 or more)" for flag, value in
           (("max-batch", args.triton_max_batch), ("instances", args.triton_instances)) if value < 1]
    if args.triton_queue_delay_us < 0:
        bad.append(f"--triton-queue-delay-us {args.triton_queue_delay_us} (use 0 or more)")
    engine = args.output is not None and args.output.suffix.lower() in ENGINE_SUFFIXES
    if engine and args.triton_max_batch > args.max_batch:
        bad.append(f"--triton-max-batch {args.triton_max_batch} above the engine's --max-batch {args.max_batch}")
    if engine and args.triton_kind == "cpu":
        bad.append("--triton-kind cpu for a TensorRT engine (engines run on a GPU; use gpu or auto)")
    if bad:
        raise StlBenchError("bad Triton settings: " + "; ".join(bad))
    import_model_config()
    check_repo_folder(args.triton_repo)
    name = args.triton_name
    if not name and args.source and Path(args.source).suffix.lower() == ".onnx":
        from stl_bench.deploy.onnx_format import read_metadata

        name = default_name(read_metadata(Path(args.source)).arch)
    elif not name and args.model and not args.source:
        name = default_name(args.model)  # random weights: the architecture is the name
    if name:
        check_target(args.triton_repo, name, args.triton_overwrite)


def _write_triton(args: argparse.Namespace, model_file: Path) -> None:
    """Write and check the Triton repository for `model_file`, and say how to serve it."""
    import shlex

    from stl_bench.serve.triton_repo import import_model_config, validate_triton_repo, write_triton_repo

    model_dir = write_triton_repo(
        model_file, args.triton_repo, args.triton_name, max_batch_size=args.triton_max_batch,
        max_queue_delay_us=args.triton_queue_delay_us, instances=args.triton_instances, kind=args.triton_kind,
        overwrite=args.triton_overwrite,
    )
    config = validate_triton_repo(model_dir)
    kind = import_model_config()[0].ModelInstanceGroup.Kind.Name(config.instance_group[0].kind)
    print(f"wrote Triton model '{config.name}' ({config.platform}, {kind}, max batch {config.max_batch_size}) "
          f"to {model_dir}")
    print(f"serve it with: tritonserver --model-repository {shlex.quote(str(args.triton_repo.absolute()))}")


def _triton_only(args: argparse.Namespace) -> int:
    """`stl-bench export EXPORTED.onnx|ENGINE --triton-repo DIR`: a repository without re-exporting."""
    from stl_bench.errors import StlBenchError

    exported = args.source and Path(args.source).suffix.lower() in (".onnx", *ENGINE_SUFFIXES)
    if args.triton_repo is None or not exported:
        raise StlBenchError("--output FILE.onnx (or FILE.engine) is required; only "
                            "`stl-bench export EXPORTED.onnx --triton-repo DIR` goes without it")
    _write_triton(args, Path(args.source))
    return 0


def _build_engine(args: argparse.Namespace, output: Path) -> None:
    """A TensorRT engine from the exported .onnx source, or from the checkpoint via a checked export."""
    from stl_bench.deploy.tensorrt import BatchProfile, build_engine, import_tensorrt
    from stl_bench.io import ensure_writable_folder

    profile = BatchProfile(args.min_batch, args.opt_batch, args.max_batch)
    import_tensorrt()  # no GPU or no TensorRT: say so before minutes of export work
    ensure_writable_folder(output.parent, "export output")
    if args.source and Path(args.source).suffix.lower() == ".onnx":
        onnx_path = Path(args.source)
    else:
        onnx_path = export_checked_onnx(args, output.with_suffix(".onnx"))
    sidecar = build_engine(onnx_path, output, profile=profile, workspace_gib=args.workspace_gib,
                           timing_cache=args.timing_cache or output.with_name("timing.cache"))
    print(f"wrote {output} (TensorRT {sidecar.platform.tensorrt_version}, {sidecar.platform.gpu_name}, "
          f"batch {profile.min}..{profile.max}) and {output.name}.json")


def run(args: argparse.Namespace) -> int:
    from stl_bench.errors import StlBenchError
    from stl_bench.io import ensure_writable_folder

    _check_triton_args(args)
    if args.output is None:
        return _triton_only(args)
    output: Path = args.output
    suffix = output.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        _build_engine(args, output)
    elif suffix != ".onnx":
        raise StlBenchError(f"--output {output} must end in .onnx or one of {', '.join(ENGINE_SUFFIXES)}")
    elif args.source and Path(args.source).suffix.lower() == ".onnx":
        raise StlBenchError(f"{args.source} is already ONNX; export from the checkpoint, pass --output FILE.engine, "
                            "or drop --output to write only a Triton repository (--triton-repo DIR)")
    else:
        ensure_writable_folder(output.parent, "export output")  # before minutes of export work
        export_checked_onnx(args, output)
    if args.triton_repo is not None:
        _write_triton(args, output)
    return 0
