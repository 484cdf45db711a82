"""Run real Krita under Xvfb with an isolated home, the Easel plugin installed from its zip by
Krita's own importer, and a scenario executed inside Krita by the test driver plugin.

    harness = KritaHarness(workdir, zip_path)
    result = harness.run(Path("scenarios/plugin_actions.py"), settings={"easel": {"server_url": url}})
    result.observations["..."]

Start-up cost: a fresh home makes Krita build its resource database (~11 s); the first run here
builds a template home once (``.cache/krita-home``, gitignored; ``EASEL_KRITA_HOME_CACHE`` moves
it) and later runs copy it (~3 s to a window). Krita's importer
(``pykrita/plugin_importer/plugin_importer.py`` in Krita's data folder) is loaded from the Krita
installation and called exactly as *Tools ▸ Scripts ▸ Import Python Plugin from File…* does.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "driver"
KRITA_DATA_DIRS = (Path("/usr/share/krita"), Path("/usr/local/share/krita"))
TEMPLATE_VERSION = "1"


class HarnessError(RuntimeError):
    pass


def krita_available() -> str | None:
    """Why real-Krita tests cannot run here, or ``None`` when they can."""
    for program in ("krita", "Xvfb"):
        if shutil.which(program) is None:
            return f"{program} is not installed (apt-get install krita xvfb python3-pyqt5)"
    if find_importer() is None:
        return "Krita's plugin_importer.py was not found in Krita's data folder"
    return None


def find_importer() -> Path | None:
    for base in KRITA_DATA_DIRS:
        path = base / "pykrita" / "plugin_importer" / "plugin_importer.py"
        if path.is_file():
            return path
    return None


def load_importer() -> Any:
    """Krita's own ``plugin_importer`` module (plain Python; ``i18n`` is Krita's, used in errors)."""
    path = find_importer()
    if path is None:
        raise HarnessError("Krita's plugin_importer.py is not installed")
    spec = importlib.util.spec_from_file_location("krita_plugin_importer", path)
    module = importlib.util.module_from_spec(spec)
    module.i18n = str  # type: ignore[attr-defined]  # Krita injects i18n into builtins
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def install_zip(zip_path: Path, resources_dir: Path) -> list[str]:
    """Import a plugin zip into ``resources_dir`` (``~/.local/share/krita``) with Krita's importer;
    returns the imported plugins' module names."""
    importer = load_importer()
    resources_dir.mkdir(parents=True, exist_ok=True)
    imported = importer.PluginImporter(str(zip_path), str(resources_dir), lambda plugin: True).import_all()
    return [plugin["name"] for plugin in imported]


def install_folder(source: Path, name: str, resources_dir: Path) -> None:
    pykrita = resources_dir / "pykrita"
    pykrita.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / f"{name}.desktop", pykrita / f"{name}.desktop")
    shutil.rmtree(pykrita / name, ignore_errors=True)
    shutil.copytree(source / name, pykrita / name, ignore=shutil.ignore_patterns("__pycache__"))


def write_settings(kritarc: Path, settings: Mapping[str, Mapping[str, str]]) -> None:
    """Set ``[group] key=value`` entries in a kritarc (KConfig format: keys before the first group
    header belong to the default group), keeping every other line as it is."""
    groups: dict[str | None, list[str]] = {None: []}
    current: str | None = None
    if kritarc.exists():
        for line in kritarc.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith("[") and stripped.endswith("]"):
                current = stripped[1:-1]
                groups.setdefault(current, [])
            else:
                groups[current].append(line)
    for group, values in settings.items():
        lines = groups.setdefault(group, [])
        for key, value in values.items():
            lines[:] = [line for line in lines if line.split("=", 1)[0].strip() != key]
            lines.insert(0, f"{key}={value}")
    out: list[str] = [line for line in groups.pop(None) if line.strip()]
    for group, lines in groups.items():
        out += ["", f"[{group}]", *[line for line in lines if line.strip()]]
    kritarc.parent.mkdir(parents=True, exist_ok=True)
    kritarc.write_text("\n".join(out).lstrip("\n") + "\n", encoding="utf-8")


def _copy_home(template: Path, home: Path) -> None:
    def copy(src: str, dst: str) -> None:
        if src.endswith(".bundle"):  # read-only resource bundles: share them
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
        shutil.copy2(src, dst)

    shutil.copytree(template, home, copy_function=copy, symlinks=True)


@dataclass
class KritaResult:
    returncode: int
    elapsed_s: float
    data: dict[str, Any]
    log: str
    home: Path

    @property
    def observations(self) -> dict[str, Any]:
        return self.data.get("observations", {})

    @property
    def error(self) -> str | None:
        return self.data.get("error")

    def check(self) -> "KritaResult":
        """Raise with Krita's log when the scenario did not finish cleanly."""
        problems = []
        if self.error:
            problems.append(f"the scenario failed: {self.error}")
        if not self.data.get("finished"):
            problems.append("the scenario did not finish")
        if self.data.get("dialogs"):
            problems.append(f"modal dialogs opened: {self.data['dialogs']}")
        if problems:
            raise AssertionError("\n".join(problems) + f"\n--- krita output (rc {self.returncode}) ---\n{self.log[-6000:]}")
        return self


@dataclass
class KritaHarness:
    workdir: Path
    plugin_zip: Path
    template: Path = field(default_factory=lambda: Path(os.environ.get(
        "EASEL_KRITA_HOME_CACHE", ROOT / ".cache" / "krita-home")))
    screen: str = "1600x1000x24"

    # -- homes

    def ensure_template(self) -> Path:
        """A home in which Krita has already started once (resource database built)."""
        marker = self.template / ".easel-template"
        if marker.exists() and marker.read_text() == TEMPLATE_VERSION:
            return self.template
        staging = self.template.with_name(self.template.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        resources = staging / ".local" / "share" / "krita"
        install_folder(DRIVER, "easel_test_driver", resources)
        write_settings(staging / ".config" / "kritarc", {"python": {"enable_easel_test_driver": "true"}})
        noop = staging / "noop_scenario.py"
        noop.write_text("def run(ctx):\n    yield 0.1\n")
        result = self._launch(staging, noop, staging / "noop.json", timeout=180)
        if not result.data.get("finished"):
            raise HarnessError(f"Krita did not start in a fresh home:\n{result.log[-4000:]}")
        noop.unlink()
        (staging / "noop.json").unlink(missing_ok=True)
        shutil.rmtree(resources / "pykrita", ignore_errors=True)
        marker_tmp = staging / ".easel-template"
        marker_tmp.write_text(TEMPLATE_VERSION)
        shutil.rmtree(self.template, ignore_errors=True)
        staging.rename(self.template)
        return self.template

    def make_home(self, name: str, settings: Mapping[str, Mapping[str, str]] | None = None) -> tuple[Path, list[str]]:
        """A fresh copy of the template with the test driver and the plugin zip installed."""
        home = self.workdir / name
        shutil.rmtree(home, ignore_errors=True)
        _copy_home(self.ensure_template(), home)
        resources = home / ".local" / "share" / "krita"
        install_folder(DRIVER, "easel_test_driver", resources)
        imported = install_zip(self.plugin_zip, resources)
        python = {"enable_easel_test_driver": "true"}
        python.update({f"enable_{plugin}": "true" for plugin in imported})
        write_settings(home / ".config" / "kritarc", {"python": python, **(settings or {})})
        return home, imported

    # -- running

    def run(self, scenario: Path, *, name: str = "krita", settings: Mapping[str, Mapping[str, str]] | None = None,
            env: Mapping[str, str] | None = None, timeout: float = 300) -> KritaResult:
        home, _ = self.make_home(name, settings)
        return self._launch(home, scenario, self.workdir / f"{name}.json", timeout=timeout, env=env)

    def _launch(self, home: Path, scenario: Path, out: Path, *, timeout: float,
                env: Mapping[str, str] | None = None) -> KritaResult:
        artifacts = self.workdir / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        runtime = home / ".run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        # -noreset: by default Xvfb resets when its last client disconnects, and Krita opens and
        # closes a first connection at start-up; a connection during the reset fails ("could not
        # connect to display").
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", self.screen, "-nolisten", "tcp", "-noreset"],
                                stdout=subprocess.PIPE, stderr=open(self.workdir / "xvfb.log", "ab"), start_new_session=True)
        started = time.monotonic()
        log_path = self.workdir / f"{out.stem}.log"
        try:
            display = xvfb.stdout.readline().decode().strip()  # type: ignore[union-attr]
            if not display:
                raise HarnessError("Xvfb did not start")
            socket = Path(f"/tmp/.X11-unix/X{display}")
            for _ in range(100):  # -displayfd reports the number as the server starts listening
                if socket.exists():
                    break
                time.sleep(0.05)
            run_env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "QT_", "KDE"))}
            run_env.update(HOME=str(home), DISPLAY=f":{display}", XDG_RUNTIME_DIR=str(runtime),
                           XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local" / "share"),
                           XDG_CACHE_HOME=str(home / ".cache"), QT_QPA_PLATFORM="xcb",
                           EASEL_TEST_SCENARIO=str(scenario), EASEL_TEST_OUT=str(out),
                           EASEL_TEST_ARTIFACTS=str(artifacts), PYTHONDONTWRITEBYTECODE="1")
            run_env.pop("VIRTUAL_ENV", None)
            run_env.pop("PYTHONPATH", None)
            run_env.update(env or {})
            with open(log_path, "w") as log:
                krita = subprocess.Popen(["krita", "--nosplash"], env=run_env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=str(home))
                try:
                    returncode = krita.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(krita.pid, signal.SIGKILL)
                    krita.wait()
                    returncode = -9
        finally:
            try:
                os.killpg(xvfb.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            xvfb.wait(10)
        elapsed = time.monotonic() - started
        data: dict[str, Any] = {}
        if out.exists():
            data = json.loads(out.read_text())
        return KritaResult(returncode, elapsed, data, log_path.read_text(errors="replace"), home)


def keep_artifacts(harness: "KritaHarness", dest: Path = ROOT / "artifacts" / "krita") -> None:
    """Copy the screenshots a run saved into ``dest`` (``artifacts/krita/``, gitignored)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in (harness.workdir / "artifacts").glob("*.png"):
        shutil.copy2(path, dest / path.name)
