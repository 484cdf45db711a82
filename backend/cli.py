"""``easel`` — the command line: ``easel serve`` runs the backend, ``easel generate`` runs one job
against a running backend, ``easel models`` lists what it serves. ``python -m backend`` is the same.

Only ``serve`` imports the model stack (lazily), so ``generate`` and ``--help`` start fast.
Exit codes: 0 success; 1 the job failed (the server's sentence is printed); 2 bad usage or
settings; 130 interrupted.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import secrets
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from protocol import ControlUnit, JobParams, LoraWeight, Margins, SubmitJob, Task

from .client import DEFAULT_URL, ClientError, JobWasCancelled
from .config import DEFAULT_HOST, DEFAULT_PORT, DEVICES, DTYPES, LOG_LEVELS, ConfigError, ServerConfig, load_toml, parse_model

log = logging.getLogger("easel.cli")

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

#: The tasks ``easel generate`` runs (depth2img needs a depth map, which it has no flag for).
CLI_TASKS = (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT, Task.DEPTH2IMG, Task.UPSCALE, Task.PREPROCESS)
#: Tasks that take --control (the server's params.CONTROL_TASKS; generate imports no server module).
CONTROL_TASKS = (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="easel",
        description="Easel: Stable Diffusion for Krita and Blender. Run the local backend, or a job against it.",
        epilog="Start with `easel serve` (no model configured: a demo model whose images are noise), "
               "then `easel generate \"a prompt\" -o out.png` in another terminal.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser(
        "serve", help="run the backend server",
        description="Run the Easel backend: a websocket server the Krita and Blender plugins (and "
                    "`easel generate`) connect to. Settings come from defaults, then --config, then flags.",
        epilog="Examples:\n  easel serve                                   # demo model, ws://127.0.0.1:9797\n"
               "  easel serve --model sd15=/models/stable-diffusion-v1-5\n"
               "  easel serve --models-dir ~/ComfyUI                # serve what an A1111/ComfyUI/InvokeAI folder holds\n"
               "  easel serve --model dreamshaper=/models/dreamshaper_8.safetensors --model-config dreamshaper=/models/v1-5\n"
               "  easel serve --model sd15=/models/v1-5 --controlnet canny=/models/control_v11p_sd15_canny --lora-dir ~/loras\n"
               "  easel serve --config easel.toml --port 9800\n"
               "  easel serve --cluster auto --config studio.toml    # jobs run on a Ray Serve deployment (docs/cluster.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--config", metavar="FILE", help="TOML settings file (models, device, dtype, queue_size, token, allowed_origins, ...)")
    serve.add_argument("--host", help=f"address to bind (default {DEFAULT_HOST}; any other address requires a token, generated if not given)")
    serve.add_argument("--port", type=int, help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one and logs it)")
    serve.add_argument("--model", action="append", metavar="ID=PATH", default=None,
                       help="a model to serve: a diffusers folder, a .safetensors checkpoint or a hub id, optionally "
                            "named (ID=PATH); repeat for several. None: the demo model. A Flux or SD 3.5 transformer "
                            "file (also fp8, or GGUF .gguf) needs --model-config")
    serve.add_argument("--model-config", action="append", metavar="ID=FOLDER", default=None,
                       help="local diffusers folder whose configs the single-file checkpoint ID is loaded with (offline; "
                            "default: the configs Easel ships for SD 1.x, SD 2.x and SDXL)")
    serve.add_argument("--controlnet", action="append", metavar="ID=PATH", default=None,
                       help="a ControlNet to offer: a diffusers ControlNet folder, a .safetensors file (with "
                            "--model-config; SD ControlNets only: Flux ones as folders or hub ids) or a hub id; its "
                            "control type (canny, depth, ...) is guessed from ID and PATH")
    serve.add_argument("--lora-dir", action="append", metavar="DIR", default=None,
                       help="a folder of LoRA .safetensors files clients may apply (by path inside it, no suffix); repeatable")
    serve.add_argument("--embedding-dir", action="append", metavar="DIR", default=None,
                       help="a folder of textual-inversion embeddings; a prompt uses one by its file name; repeatable; "
                            "not a --lora-dir (nor the LoRA folder of a --models-dir), nor inside or around one")
    serve.add_argument("--models-dir", action="append", metavar="DIR", default=None, dest="models_dir",
                       help="an A1111/Forge, ComfyUI or InvokeAI folder (or any folder of .safetensors models): its "
                            "checkpoints, ControlNets, LoRAs, embeddings and ESRGAN upscalers are served, found "
                            "again on every listing; repeatable. `easel models --models-dir DIR` shows what it holds")
    serve.add_argument("--allow-downloads", action="store_true", default=None, dest="allow_downloads",
                       help="let clients (the plugins) ask the server to download the models `easel download` "
                            "offers, into the first --models-dir (default: refuse)")
    serve.add_argument("--device", choices=DEVICES, help="device to run on (default auto: cuda, then mps, then cpu)")
    serve.add_argument("--dtype", choices=DTYPES, help="weights' precision (default auto: fp16 on cuda/mps — bf16 on cuda for "
                                                       "Flux.2 Klein and Z-Image — fp32 on cpu)")
    serve.add_argument("--queue-size", type=int, metavar="N", help="jobs that may wait for the device, all clients together, served "
                       "round-robin by client; a client with none waiting may always queue one (default 16)")
    serve.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's own choice)")
    serve.add_argument("--token", help="secret clients must send to connect (default: none on loopback; off "
                                       "loopback a random one is generated and printed at start)")
    serve.add_argument("--reconnect-grace", type=float, metavar="SECONDS", dest="reconnect_grace",
                       help="how long a client that lost its connection keeps its running jobs and unreceived "
                            "results for it to reconnect (default 30; 0: cancel its jobs at once); a client that "
                            "closes with 1000 has left, and its jobs are cancelled at once")
    serve.add_argument("--max-client-jobs", type=int, metavar="N",
                       help="jobs one client may have queued or running at once (default 8)")
    serve.add_argument("--max-connections", type=int, metavar="N",
                       help="open connections at once; more are refused with HTTP 503 (default 32); a quarter of "
                            "them (1 to 8) per address may be waiting to send hello, a new one closes the oldest")
    serve.add_argument("--memory-budget", type=int, metavar="MIB",
                       help="MiB the server may hold for clients, all together: their image stores (uploads and "
                            "results kept for reuse, at most 512 MiB each), frames they have not read yet, "
                            "uploads in flight and results being built; unread frames are bounded per client "
                            "by its share (the budget over the connected clients) (default: a quarter of this "
                            "machine's memory, at least 256)")
    serve.add_argument("--device-memory", type=int, metavar="MIB",
                       help="MiB a job may use on the device; the memory plan switches on VAE tiling, attention "
                            "slicing or offloading to fit it, and refuses a job that cannot fit (default: on CUDA "
                            "the free GPU memory, elsewhere the memory available when the server starts)")
    serve.add_argument("--allow-origin", action="append", metavar="ORIGIN", default=None,
                       help="a browser Origin allowed to connect, e.g. https://example.org (default: none; clients "
                            "that send no Origin, like the plugins, are always allowed)")
    serve.add_argument("--no-preload", dest="preload", action="store_false", default=None,
                       help="load models at their first job instead of loading the first one at start")
    serve.add_argument("--model-cache-size", type=int, metavar="N", help="loaded models kept in memory at once (default 1)")
    serve.add_argument("--offload", action="store_true", default=None, help="CUDA: keep idle model parts on the CPU (less GPU memory, slower)")
    serve.add_argument("--allow-unsafe-checkpoints", action="store_true", default=None,
                       help="also load pickle-based checkpoints, LoRAs and embeddings (.ckpt/.bin/.pt or any file whose "
                            "content is a pickle, whatever its name), which can run arbitrary code (default: refuse them)")
    serve.add_argument("--cache-dir", metavar="DIR", help="where the demo model is built (default: the user's cache folder)")
    serve.add_argument("--drain", action="store_true", default=None,
                       help="on Ctrl-C / SIGTERM, finish queued and running jobs before exiting (default: cancel them)")
    serve.add_argument("--log-level", choices=LOG_LEVELS, help="how much to log (default info)")
    serve.add_argument("--cluster", nargs="?", const="", default=None, metavar="ADDRESS",
                       help="run jobs on a Ray Serve deployment, one replica per GPU, instead of in this process: "
                            "ADDRESS of a Ray cluster (head:6379), or auto to start a local Ray (default: the config's "
                            "[cluster] address, else auto). Replicas, GPUs and models per replica come from the "
                            "[cluster] table of --config. Needs pip install -e '.[cluster]'; see docs/cluster.md")

    gen = commands.add_parser(
        "generate", help="run one job on a running server and save the result",
        description="Run txt2img, img2img, inpaint, outpaint, depth2img, upscale or preprocess on a running Easel "
                    "server and write the result as PNG. The task follows from the inputs (--mask: inpaint; "
                    "--margins: outpaint; --depth: depth2img; --upscale: upscale; --preprocessor: preprocess; --image: img2img; none: txt2img) "
                    "unless --task is given. ControlNets (--control) and LoRAs (--lora) add to txt2img, img2img, "
                    "inpaint and outpaint; `easel models` lists the ids. Progress goes to stderr, the written "
                    "file names to stdout.",
        epilog="Examples:\n  easel generate \"a lighthouse at dusk\" -o lighthouse.png\n"
               "  easel generate \"oil painting\" --image sketch.png --strength 0.6 -o painted.png\n"
               "  easel generate \"a red door\" --image house.png --mask door-mask.png -o door.png\n"
               "  easel generate \"more sky\" --image photo.png --margins 0,128,0,0 -o taller.png\n"
               "  easel generate \"a stone temple\" --depth depth.png --model demo-depth -o temple.png\n"
               "  easel generate \"a castle\" --control canny:edges.png:0.8 --lora styles/ink:0.6 -o castle.png\n"
               "  easel generate \"a castle\" --control canny:photo.png:preprocessor=canny:end=0.6 -o castle.png\n"
               "  easel generate \"detailed\" --image small.png --upscale 2 -o big.png\n"
               "  easel generate --image photo.png --preprocessor lineart_standard -o lines.png\n\n"
               "--control MODEL:IMAGE[:WEIGHT[:START:END]][:preprocessor=NAME]\n"
               "  MODEL     a ControlNet id the server lists (`easel models`)\n"
               "  IMAGE     the control image file; it covers the result (same aspect)\n"
               "  WEIGHT    how strongly it guides, 0 to 2 (default 1)\n"
               "  START:END the fraction of the steps it guides, 0 to 1 (default 0:1)\n"
               "  Each of weight=, start=, end= may also be written by name (canny:edges.png:end=0.5).\n"
               "  preprocessor=NAME: IMAGE is a picture; the server makes the control image from it first.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("prompt", nargs="?", default="", help="what to generate")
    gen.add_argument("-o", "--output", default="easel.png", metavar="FILE",
                     help="result PNG (default easel.png; a batch writes NAME-1.png, NAME-2.png, ...)")
    gen.add_argument("--overwrite", action="store_true", help="replace output files that exist (default: refuse)")
    gen.add_argument("--url", default=os.environ.get("EASEL_URL", DEFAULT_URL),
                     help=f"server address (default $EASEL_URL or {DEFAULT_URL})")
    gen.add_argument("--token", default=os.environ.get("EASEL_TOKEN", ""), help="the server's token, if it has one (default $EASEL_TOKEN)")
    gen.add_argument("--task", choices=CLI_TASKS, help="force the task")
    gen.add_argument("--image", metavar="FILE",
                     help="input image (PNG, JPEG, ...) for img2img, inpaint, outpaint, depth2img, upscale and preprocess")
    gen.add_argument("--mask", metavar="FILE", help="inpaint mask: white repaints, black keeps (same size as --image)")
    gen.add_argument("--depth", metavar="FILE",
                     help="depth2img: a depth map, white = near (8-bit grey, or 16-bit PNG / float TIFF kept at full "
                          "precision); with --image too it shapes that image, alone it starts from grey. Needs a "
                          "depth model (`easel models`)")
    gen.add_argument("--margins", metavar="L,T,R,B", help="outpaint: pixels to add on the left, top, right, bottom (or one number for all)")
    gen.add_argument("--upscale", type=float, metavar="FACTOR",
                     help="upscale --image by FACTOR (1 to 4), repainting it tile by tile (--strength default 0.35; "
                          "--width/--height: the tile size)")
    gen.add_argument("--preprocessor", metavar="NAME",
                     help="preprocess: turn --image into a control image (canny, lineart_standard, depth_midas, ...; "
                          "`easel models` lists them); no model runs")
    gen.add_argument("--control", action="append", default=[], metavar="MODEL:IMAGE[:WEIGHT[:START:END]]",
                     help="guide with a ControlNet (repeatable, up to 4); add :preprocessor=NAME to make the "
                          "control image from a picture on the server. Format below")
    gen.add_argument("--lora", action="append", default=[], metavar="ID[:WEIGHT]",
                     help="apply a LoRA the server lists, at WEIGHT (-2 to 2, default 1); repeatable")
    gen.add_argument("-n", "--negative", default="", metavar="TEXT", help="negative prompt")
    gen.add_argument("--model", default="", metavar="ID", help="model id (default: the server's first; see `easel models`)")
    gen.add_argument("--seed", type=int, help="seed (default random; the seed used is printed)")
    gen.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    gen.add_argument("--cfg", type=float, metavar="SCALE", help="classifier-free guidance scale (default: the model's)")
    gen.add_argument("--strength", type=float, help="img2img/inpaint/depth2img/upscale: how much to change, 0 to 1")
    gen.add_argument("--sampler", default="", help="sampler name (see `easel models` for the list)")
    gen.add_argument("--width", type=int, help="txt2img: the result's width in pixels; tasks with --image: the "
                                               "width of the area the model works at (upscale: of a tile) (default: the model's)")
    gen.add_argument("--height", type=int, help="like --width, for the height")
    gen.add_argument("--batch", type=int, default=1, metavar="N", help="images to generate (default 1)")
    gen.add_argument("--context", type=int, metavar="PX", help="inpaint: pixels of context around the mask")
    gen.add_argument("--feather", type=int, metavar="PX", help="inpaint/outpaint: width of the blended seam")
    gen.add_argument("--save-previews", metavar="DIR", help="write every step preview as DIR/step-NNN.jpg")
    gen.add_argument("--no-previews", action="store_true", help="ask the server not to send previews")
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    models = commands.add_parser("models", help="list the models, LoRAs, preprocessors, samplers and tasks a running server offers",
                                 description="List what a running Easel server offers; with --models-dir, what a "
                                             "models folder holds (no server needed).")
    models.add_argument("--missing", action="store_true",
                        help="list what each feature needs and lacks (base model, ControlNets, preprocessor weights, "
                             "TAESD), with the `easel download` command that gets it; looks at --models-dir and the "
                             "Hugging Face cache, no server needed")
    models.add_argument("--models-dir", action="append", metavar="DIR", default=None, dest="models_dir",
                        help="instead of asking a server: list every model file in an A1111/Forge, ComfyUI or InvokeAI "
                             "folder with its kind, family, id, and why a file is not served; repeatable")
    models.add_argument("--url", default=os.environ.get("EASEL_URL", DEFAULT_URL), help=f"server address (default {DEFAULT_URL})")
    models.add_argument("--token", default=os.environ.get("EASEL_TOKEN", ""), help="the server's token, if it has one")
    download = commands.add_parser(
        "download", help="download curated models (base models, ControlNets, preprocessor weights, TAESD)",
        description="Download curated models from the Hugging Face hub (or the mirror in HF_ENDPOINT; HF_TOKEN for "
                    "gated ones), with progress; a cut transfer is resumed, size and SHA-256 are checked, free disk "
                    "space is checked before the first byte. Checkpoints and ControlNets go into --to (an A1111, "
                    "ComfyUI or InvokeAI folder: the matching sub-folder; else DIR/models/checkpoints, ...), "
                    "preprocessor weights and TAESD into the Hugging Face cache. Without a name: the list.",
        epilog="Examples:\n  easel download                                   # what there is\n"
               "  easel download sd15 sd15-canny --to ~/ComfyUI\n  easel serve --models-dir ~/ComfyUI",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    download.add_argument("names", nargs="*", metavar="NAME", help="presets to download (none: list them)")
    download.add_argument("--to", metavar="DIR", default=str(Path("~/easel-models")),
                          help="the models folder to download into (default ~/easel-models)")
    download.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "generate":
        return generate(args)
    if args.command == "download":
        return download(args)
    return models(args)


# --------------------------------------------------------------------------- serve


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The config from ``--config`` and the flags (flags win). Raises :class:`ConfigError`."""
    config = ServerConfig()
    if args.config:
        config = config.merged(load_toml(Path(args.config).expanduser()))
    flags: dict[str, Any] = {
        "host": args.host, "port": args.port, "device": args.device, "dtype": args.dtype,
        "queue_size": args.queue_size, "threads": args.threads, "token": args.token,
        "log_level": args.log_level, "drain_on_shutdown": args.drain, "model_cache_size": args.model_cache_size,
        "offload": args.offload, "preload": args.preload, "allow_unsafe_checkpoints": args.allow_unsafe_checkpoints,
        "cache_dir": Path(args.cache_dir).expanduser() if args.cache_dir else None,
        "allowed_origins": tuple(args.allow_origin) if args.allow_origin else None,
        "reconnect_grace_s": args.reconnect_grace, "max_client_jobs": args.max_client_jobs,
        "max_connections": args.max_connections, "allow_downloads": args.allow_downloads,
        "memory_budget": args.memory_budget * 1024 * 1024 if args.memory_budget is not None else None,
        "device_memory": args.device_memory * 1024 * 1024 if args.device_memory is not None else None,
    }
    if args.model:
        flags["models"] = tuple(parse_model(text) for text in args.model)
    if args.controlnet:
        from dataclasses import replace

        nets = tuple(replace(parse_model(text), kind="controlnet") for text in args.controlnet)
        flags["models"] = tuple(flags.get("models") or config.models) + nets
    if args.lora_dir:
        flags["lora_dirs"] = tuple(Path(d).expanduser() for d in args.lora_dir)
    if args.embedding_dir:
        flags["embedding_dirs"] = tuple(Path(d).expanduser() for d in args.embedding_dir)
    if args.models_dir:
        flags["models_dirs"] = tuple(Path(d).expanduser() for d in args.models_dir)
    config = config.merged(flags)
    if args.model_config:
        from dataclasses import replace

        local = {}
        for text in args.model_config:
            ident, sep, folder = text.partition("=")
            if not sep or not folder:
                raise ConfigError(f"--model-config {text!r}: write --model-config ID=FOLDER")
            local[ident] = folder
        unknown = sorted(set(local) - {m.id for m in config.models})
        if unknown:
            raise ConfigError(f"--model-config names {unknown[0]!r}, which is not a configured model id")
        config = config.merged({"models": tuple(replace(m, config=local.get(m.id, m.config)) for m in config.models)})
    if config.allow_downloads and not config.models_dirs:
        raise ConfigError("--allow-downloads needs a models folder to download into: add --models-dir DIR")
    return config


def with_token(config: ServerConfig) -> tuple[ServerConfig, bool]:
    """``config`` with a token when it binds off loopback and has none: a fresh random one
    (``secrets``, 144 bits). Returns the config and whether the token was generated (print it then:
    the operator gives it to the clients)."""
    if config.loopback or config.token:
        return config, False
    return config.merged({"token": secrets.token_urlsafe(18)}), True


def serve(args: argparse.Namespace) -> int:
    try:
        config = server_config(args)
    except ConfigError as exc:
        print(f"easel serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from .server import setup_logging

    setup_logging(config.log_level)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    config, generated = with_token(config)
    if generated:
        log.warning("listening on %s, which other machines can reach: clients must send this token: %s",
                    config.host, config.token)
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    from .engine import Engine
    from .server import EaselServer

    _quiet_libraries()

    try:
        engine = Engine(config)
    except ValueError as exc:  # models.ModelConfigError: a model spec that cannot work
        log.error("%s", exc)
        return EXIT_USAGE
    if getattr(args, "cluster", None) is not None:
        from .cluster.cli import serve_cluster

        return serve_cluster(config, engine, args.cluster, _serve)
    try:
        return asyncio.run(_serve(EaselServer(config, engine)))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return EXIT_INTERRUPTED


def _quiet_libraries() -> None:
    """The server's log is for its operator: no library progress bars or deprecation chatter in it."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.captureWarnings(True)  # any other warning becomes a log line
    for name in ("diffusers", "transformers", "huggingface_hub"):
        try:
            module = __import__(f"{name}.utils.logging", fromlist=["disable_progress_bar"])
            module.disable_progress_bar()
        except (ImportError, AttributeError):
            pass


async def _serve(server: Any) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: the operator does not want to wait for the running job
            log.warning("second signal: exiting now, without waiting for the running job")
            os._exit(EXIT_INTERRUPTED)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal)
        except (NotImplementedError, RuntimeError):  # Windows: Ctrl-C arrives as KeyboardInterrupt
            pass
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s; is another server running there? Pick another port with --port",
                  server.config.host, server.config.port, exc.strerror or exc)
        await server.scheduler.close()
        return EXIT_USAGE
    await server.serve_until(stop)
    return 0


# --------------------------------------------------------------------------- generate


def job_from_args(args: argparse.Namespace) -> tuple[SubmitJob, list[Any]]:
    """The job and its images from ``easel generate``'s flags. Raises ``ValueError`` with a sentence.

    Checks only what the flags say (which task, which files, the shape of --control and --lora);
    ranges and ids are the server's to check, and its sentence is printed when it refuses."""
    from .client import load_depth, load_image, load_mask

    margins = _margins(args.margins) if args.margins else None
    asks = [(flag, task) for flag, task, given in (
        ("--mask", Task.INPAINT, args.mask), ("--margins", Task.OUTPAINT, margins), ("--depth", Task.DEPTH2IMG, args.depth),
        ("--upscale", Task.UPSCALE, args.upscale is not None), ("--preprocessor", Task.PREPROCESS, args.preprocessor),
    ) if given]
    if args.task:
        task = args.task
    elif len(asks) > 1:
        raise ValueError(f"{asks[0][0]} asks for {asks[0][1]} and {asks[1][0]} for {asks[1][1]}; use one of them")
    else:
        task = asks[0][1] if asks else Task.IMG2IMG if args.image else Task.TXT2IMG
    images, roles = [], {}
    if task == Task.DEPTH2IMG and not (args.image or args.depth):
        raise ValueError("depth2img needs --depth FILE (a depth map), --image FILE (its depth is estimated), or both")
    if task != Task.TXT2IMG and (args.image or task != Task.DEPTH2IMG):
        if not args.image:
            raise ValueError(f"{task} needs an input image: add --image FILE")
        image = load_image(args.image)
        images.append(image)
        roles["image"] = image.id
    elif task == Task.TXT2IMG and (args.image or args.mask):
        raise ValueError("txt2img takes no --image or --mask; drop them or pick another --task")
    for flag, wanted in asks:
        if wanted != task:
            raise ValueError(f"{flag} is for {wanted}; {task} does not use it")
    if task == Task.INPAINT:
        if not args.mask:
            raise ValueError("inpaint needs a mask: add --mask FILE (white repaints, black keeps)")
        mask = load_mask(args.mask)
        images.append(mask)
        roles["mask"] = mask.id
    if task == Task.DEPTH2IMG and args.depth:
        depth = load_depth(args.depth)
        images.append(depth)
        roles["depth"] = depth.id
    if task == Task.OUTPAINT and margins is None:
        raise ValueError("outpaint needs --margins L,T,R,B (pixels to add on each side)")
    if task == Task.PREPROCESS and not args.preprocessor:
        raise ValueError("preprocess needs --preprocessor NAME (canny, lineart_standard, ...; see `easel models`)")
    if args.control and task not in CONTROL_TASKS:
        raise ValueError(f"--control works with {', '.join(CONTROL_TASKS)}; {task} takes no ControlNet")
    if args.lora and task == Task.PREPROCESS:
        raise ValueError("preprocess runs no model, so it takes no --lora")
    controls = []
    for text in args.control:
        model, path, fields = parse_control(text)
        control_image = load_image(path)
        if all(known.id != control_image.id for known in images):
            images.append(control_image)
        controls.append(ControlUnit(model=model, image=control_image.id, **fields))
    params = JobParams(
        prompt=args.prompt, negative_prompt=args.negative, model=args.model, seed=args.seed, steps=args.steps,
        cfg_scale=args.cfg, strength=args.strength, sampler=args.sampler, width=args.width, height=args.height,
        batch_size=args.batch, margins=margins if task == Task.OUTPAINT else None, context=args.context,
        feather=args.feather, previews=not args.no_previews, controls=tuple(controls),
        loras=tuple(parse_lora(text) for text in args.lora), preprocessor=args.preprocessor or "",
        upscale_factor=args.upscale)
    job = SubmitJob(f"cli-{uuid.uuid4().hex[:12]}", task, params, roles or None)
    return job, images


_CONTROL_USAGE = "write MODEL:IMAGE[:WEIGHT[:START:END]][:preprocessor=NAME], e.g. canny:edges.png:0.8"


def parse_control(text: str) -> tuple[str, str, dict[str, Any]]:
    """``--control MODEL:IMAGE[:WEIGHT[:START:END]][:preprocessor=NAME]`` → (model, image file,
    ControlUnit fields). Raises ``ValueError`` with a sentence.

    The options are read from the right: numbers (one is the weight; three are weight, start, end)
    and ``name=value`` items (weight, start, end, preprocessor), so the image path between them may
    itself hold colons (``C:\\sketch.png``)."""
    model, sep, rest = text.partition(":")
    if not sep or not model or not rest:
        raise ValueError(f"--control {text!r}: {_CONTROL_USAGE}")
    parts = rest.split(":")
    named: dict[str, str] = {}
    numbers: list[str] = []
    while len(parts) > 1:
        key, eq, value = parts[-1].partition("=")
        if eq and key in ("weight", "start", "end", "preprocessor"):
            if key in named:
                raise ValueError(f"--control {text!r}: {key}= is given twice")
            named[key] = value
        elif _is_number(parts[-1]):
            numbers.insert(0, parts[-1])
        else:
            break
        parts.pop()
    path = ":".join(parts)
    if not path:
        raise ValueError(f"--control {text!r}: the image file is missing; {_CONTROL_USAGE}")
    if len(numbers) not in (0, 1, 3):
        raise ValueError(f"--control {text!r}: after the image write one number (the weight) or three "
                         f"(weight, start, end), got {len(numbers)}")
    fields: dict[str, Any] = {}
    for key, value in zip(("weight", "start", "end"), numbers):
        fields[key] = float(value)
    for key, value in named.items():
        if key in fields:
            raise ValueError(f"--control {text!r}: the {key} is given twice (as a number and as {key}=)")
        if key == "preprocessor":
            if not value:
                raise ValueError(f"--control {text!r}: preprocessor= needs a name, e.g. preprocessor=canny")
            fields[key] = value
        elif not _is_number(value):
            raise ValueError(f"--control {text!r}: {key}= needs a number, got {value!r}")
        else:
            fields[key] = float(value)
    return model, path, fields


def parse_lora(text: str) -> LoraWeight:
    """``--lora ID[:WEIGHT]`` → a LoraWeight (weight 1 when left out). Raises ``ValueError``."""
    ident, sep, weight = text.rpartition(":")
    if not sep:
        ident, weight = text, "1"
    if not ident or not _is_number(weight):
        raise ValueError(f"--lora {text!r}: write ID or ID:WEIGHT, e.g. styles/ink:0.8 (ids: `easel models`)")
    return LoraWeight(ident, float(weight))


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _margins(text: str) -> Margins:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--margins {text!r}: write four whole numbers L,T,R,B (or one for all sides)") from None
    if len(values) == 1:
        values *= 4
    if len(values) != 4 or any(v < 0 for v in values):
        raise ValueError(f"--margins {text!r}: write four numbers of 0 or more, L,T,R,B (or one for all sides)")
    return Margins(*values)


def output_paths(output: str, count: int) -> list[Path]:
    path = Path(output)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix or '.png'}") for i in range(1, count + 1)]


class ProgressBar:
    """Plain-text progress on stderr: one redrawn line on a terminal, a line per change otherwise."""

    def __init__(self, stream: Any = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width
        self._open = False
        self._started = 0.0

    def line(self, text: str) -> None:
        self.end()
        print(text, file=self.stream, flush=True)

    def step(self, step: int, total: int) -> None:
        filled = self.width * step // max(total, 1)
        elapsed = time.perf_counter() - self._started if self._started else 0.0
        self.show(f"[{'#' * filled}{'.' * (self.width - filled)}] step {step}/{total} {elapsed:5.1f} s")

    def show(self, text: str) -> None:
        """``text`` as the progress line: redrawn in place on a terminal, a new line otherwise."""
        if self.tty:
            print("\r" + text, end="", file=self.stream, flush=True)
            self._open = True
        else:
            print(text, file=self.stream, flush=True)

    def start(self) -> None:
        self._started = time.perf_counter()

    def end(self) -> None:
        if self._open:
            print(file=self.stream, flush=True)
            self._open = False


class _Silent:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def generate(args: argparse.Namespace) -> int:
    from .client import generate as run_job, save_image

    try:
        job, images = job_from_args(args)
    except ValueError as exc:
        print(f"easel generate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    outputs = output_paths(args.output, args.batch)
    taken = [p for p in outputs if p.exists()]
    if taken and not args.overwrite:
        print(f"easel generate: {taken[0]} exists; pick another --output or add --overwrite", file=sys.stderr)
        return EXIT_USAGE
    previews_dir = Path(args.save_previews) if args.save_previews else None
    if previews_dir is not None:
        previews_dir.mkdir(parents=True, exist_ok=True)
    bar = ProgressBar(_Silent() if args.quiet else sys.stderr)

    def on_event(event: Any) -> None:
        name = type(event).__name__
        if name == "Welcome":
            bar.line(f"connected to {event.server_name} {event.server_version} at {args.url}")
            if event.notice:
                bar.line(f"note: {event.notice}")
        elif name in ("JobAccepted", "QueuePosition"):
            if event.queue_position > 0:
                bar.line(f"waiting: {event.queue_position} job(s) ahead")
        elif name == "JobStarted":
            model = f" on {event.model}" if event.model else ""
            steps = f"{event.steps} step{'s' if event.steps != 1 else ''}"
            bar.line(f"{job.task}{model}: {event.width}x{event.height}, {steps}, seed {event.seed}")
            bar.start()
        elif name == "StepPreview":
            bar.step(event.step, event.total)
            if previews_dir is not None:
                (previews_dir / f"step-{event.step:03d}.jpg").write_bytes(event.jpeg)

    try:
        result = asyncio.run(run_job(args.url, job, images, token=args.token, on_event=on_event))
    except KeyboardInterrupt:
        bar.line("interrupted; the job was cancelled")
        return EXIT_INTERRUPTED
    except JobWasCancelled as exc:
        bar.line(f"easel generate: {exc}")
        return EXIT_FAILED
    except ClientError as exc:
        bar.line(f"easel generate: {exc}")
        return EXIT_FAILED
    bar.end()
    for image, path in zip(result.images, outputs):
        save_image(image, path)
        print(path)
    seeds = result.finished.seeds or (result.finished.seed,)
    bar.line(f"done: seed {', '.join(str(s) for s in seeds)}")
    return 0


# --------------------------------------------------------------------------- models


def models(args: argparse.Namespace) -> int:
    if args.missing:
        return list_missing([Path(d).expanduser() for d in args.models_dir or ()])
    if args.models_dir:
        return list_folders([Path(d).expanduser() for d in args.models_dir])
    from .client import list_models

    try:
        welcome, listing = asyncio.run(list_models(args.url, token=args.token))
    except ClientError as exc:
        print(f"easel models: {exc}", file=sys.stderr)
        return EXIT_FAILED
    caps = welcome.capabilities
    print(f"{welcome.server_name} {welcome.server_version} on {caps.device}")
    if welcome.notice:
        print(f"note: {welcome.notice}")
    print("models:")
    for model in listing.models:
        if model.kind == "reference":  # an adapter a job's references name: no size or steps of its own
            print(f"  {model.id:24} reference ({model.family}, {model.control_type}){' [demo]' if model.demo else ''}")
            continue
        extra = f", control {model.control_type}" if model.control_type else ""
        print(f"  {model.id:24} {model.kind} ({model.family}{extra}) {model.default_width}x{model.default_height}, "
              f"{model.default_steps} steps{' [demo]' if model.demo else ''}")
    if listing.loras:
        print("loras (--lora ID[:WEIGHT]):")
        for lora in listing.loras:
            print(f"  {lora.id:24} {lora.family}")
    if listing.embeddings:
        print(f"embeddings (write the word in a prompt): {', '.join(e.trigger or e.id for e in listing.embeddings)}")
    print(f"tasks:    {', '.join(caps.tasks)}")
    print(f"samplers: {', '.join(caps.samplers)}")
    if caps.preprocessors:
        print(f"preprocessors: {', '.join(caps.preprocessors)}")
    return 0


def list_missing(folders: Sequence[Path]) -> int:
    """``easel models --missing``: each feature's needs, what is here and the command for what is not."""
    from .catalog import scan
    from .download import needs

    if not _all_folders(folders):
        return EXIT_USAGE
    result = scan(folders)
    families = {f.family for f in result.found if f.served and f.kind == "checkpoint"}
    controls: dict[str, set[str]] = {}
    for found in result.found:
        if found.served and found.kind == "controlnet":
            controls.setdefault(found.family, set()).add(found.detail)
    lacking = [need for need in needs(families, controls) if not need.have]
    if not families:
        print("no checkpoint found" + (f" in {', '.join(map(str, folders))}" if folders else " (give --models-dir DIR)"))
    for need in lacking:
        family = f" ({need.family})" if need.family else ""
        print(f"missing  {need.feature}{family}: {need.what}\n         fix: {need.fix}")
    if not lacking:
        print("nothing missing")
    return 0


def download(args: argparse.Namespace) -> int:
    """``easel download``: the presets named, one file after another, with a progress bar."""
    from .download import PRESETS, DownloadError, install, resolve_names

    if not args.names:
        print("presets (easel download NAME ... --to DIR):")
        for preset in PRESETS.values():
            print(f"  {preset.name:12} {preset.size / 1e9:5.2f} GB  {preset.description}")
        return 0
    try:
        presets = resolve_names(args.names)
    except KeyError as exc:
        print(f"easel download: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    target = Path(args.to).expanduser()
    bar = ByteProgress(_Silent() if args.quiet else sys.stderr)
    for preset in presets:
        try:
            paths = install(preset, target, on_file=lambda file, remote: bar.start(file.path, remote.size),
                            progress=bar.update)
        except DownloadError as exc:
            bar.end()
            print(f"easel download: {preset.name}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            bar.end()
            print("easel download: interrupted; run the same command again to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        bar.end()
        for path in paths:
            print(path)
    if any(file.kind != "hf-cache" for preset in presets for file in preset.files):
        print(f"serve them with: easel serve --models-dir {target}", file=sys.stderr)
    return 0


class ByteProgress(ProgressBar):
    """A download's progress on stderr: one redrawn line on a terminal, a line per tenth otherwise."""

    def __init__(self, stream: Any, width: int = 30) -> None:
        super().__init__(stream, width)
        self._name, self._tenth = "", -1

    def start(self, name: str = "", total: int = 0) -> None:
        self.end()
        self._name, self._started, self._tenth = name, time.perf_counter(), -1

    def update(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        if not self.tty and int(share * 10) == self._tenth:
            return
        self._tenth = int(share * 10)
        filled = int(self.width * share)
        rate = done / max(time.perf_counter() - self._started, 1e-6) / 1e6
        self.show(f"{self._name}: [{'#' * filled}{'.' * (self.width - filled)}] {share:4.0%} "
                  f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB {rate:6.1f} MB/s")


def _all_folders(folders: Sequence[Path]) -> bool:
    """True when every one of ``folders`` is a folder; else says which is not (on stderr)."""
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        print(f"easel models: {missing[0]} is not a folder", file=sys.stderr)
    return not missing


def list_folders(folders: Sequence[Path]) -> int:
    """``easel models --models-dir``: what a scan of ``folders`` finds, grouped by status."""
    from .catalog import scan

    if not _all_folders(folders):
        return EXIT_USAGE
    result = scan(folders)
    for root, layout in result.layouts.items():
        print(f"{root}: {layout} layout")
    for status, title in (("served", "served"), ("listed", "understood, not served"),
                          ("refused", "refused"), ("unreadable", "unreadable")):
        group = [f for f in result.found if f.status == status]
        if not group:
            continue
        print(f"{title} ({len(group)}):")
        for found in group:
            what = found.kind + (f" {found.family}" if found.family else "") + (f", {found.detail}" if found.detail else "")
            print(f"  {found.id or found.path.name:32} {what}" + (f"  {found.path}" if found.id else ""))
            if found.reason:
                print(f"  {'':32} {found.reason}")
    if not result.found:
        print("no model files found")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
