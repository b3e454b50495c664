"""Typed configuration: built-in deployed defaults, a TOML file, then CLI overrides.

Resolution order (later wins):
  1. the dataclass defaults below (the deployed values);
  2. a TOML file: ``--config PATH``, else /etc/shm-vla/<instance>.toml if it exists;
  3. ``--set section.key=value`` overrides from the command line (values parsed as TOML).

Every key is checked: an unknown key or a value of the wrong type is a ConfigError,
which the CLI prints as one line and exits with code 2.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG_DIR = Path("/etc/shm-vla")
EXIT_CONFIG_ERROR = 2


class ConfigError(ValueError):
    """A configuration problem; the message names the key and is meant for one line."""


# --------------------------------------------------------------------------- sections
@dataclass
class ShmConfig:
    group: str = ""            # if set, segments are 0660 and chowned to this group
    prefix: str = "shm-vla"    # segment names: /<prefix>.<instance>.<stream>
    results_depth: int = 600   # action results kept (60 s at 10 Hz)
    stats_max_processes: int = 16


@dataclass
class CameraConfig:
    bind: str = "tcp://0.0.0.0:5555"
    rcvhwm: int = 200                  # messages; bursts of all 5 cameras fit many times
    width: int = 640
    height: int = 360
    rate_hz: float = 5.0               # per camera
    views: list = field(default_factory=lambda: ["View1", "View2", "View3", "View4", "View5"])
    # ZED serial -> view; only left images are used. "oak" names go to oak_view.
    zed_serials: dict = field(default_factory=lambda: {
        "41182735": "View1", "49429257": "View2", "44377151": "View3", "49045152": "View4"})
    oak_view: str = "View5"
    ring_depth: int = 16               # frames per view (3.2 s at 5 Hz)
    jpeg_max_bytes: int = 512 << 10    # a received JPEG larger than this is rejected (640x360 q75: ~40 KB)
    decode_workers: int = 2            # decode threads (libjpeg-turbo releases the GIL)
    channel_order: str = "RGB"         # order written to the rings; what the model expects


@dataclass
class RobotConfig:
    connect: str = "tcp://{robot_ip}:5556"
    topic: str = "robot_state"
    rate_hz: float = 100.0
    ring_depth: int = 1024             # 10 s at 100 Hz
    dims: int = 12                     # 6 joints then 6 pose values


@dataclass
class SensorConfig:
    bind: str = "0.0.0.0:9999"
    rate_hz: float = 650.0
    ascan_len: int = 1025
    window: int = 65                   # records the model sees (100 ms)
    force_position: str = "first"      # "first": [force, ascan...] (deployed); "last": [ascan..., force]
    nonfinite_policy: str = "drop"     # "drop" a record with NaN/Inf, or "keep" it
    rcvbuf_bytes: int = 4 << 20
    ring_depth: int = 4096             # 6.3 s at 650 Hz
    clock_offset_warmup: int = 50      # datagrams used for the first offset estimate
    batch_max_datagrams: int = 64      # datagrams drained per wakeup


@dataclass
class CommandConfig:
    connect: str = "tcp://{robot_ip}:5000"
    sndhwm: int = 2                    # a robot that stops reading must not queue stale commands (0.2 s at 10 Hz)
    start_joints: list = field(default_factory=lambda: [191.0, 1.0, 309.0, 1.0, 91.0, 1.0])
    lock_j6: bool = False


@dataclass
class ModelConfig:
    checkpoint: str = ""               # empty: the demo generates a tiny one
    backbone: str = "compact"          # "compact" or "qwen2.5-vl"
    backbone_dir: str = ""             # local Qwen2.5-VL directory (never downloaded)
    task: str = "eye_trocar"           # fills the prompt template
    flow_horizon: int = 8
    flow_steps: int = 10
    flow_solver: str = "euler"         # "euler" or "rk4"
    vl_device: str = "cpu"             # e.g. "cuda:0"
    act_device: str = "cpu"
    act_dtype: str = "float32"         # "bfloat16" on GPU
    cuda_graph: bool = True            # capture the tick when on CUDA
    act_stream_priority: int = -1      # CUDA: priority of the tick's stream (lower is higher; 0 normal)
    act_compile: bool = False          # torch.compile the heads before capture (slower start-up)
    act_threads: int = 1               # torch CPU threads of the action process (2 cores: no oversubscription)
    vl_threads: int = 1                # torch CPU threads of the VL process
    seed: int = 0


@dataclass
class VlConfig:
    view_policy: str = "newest"        # "newest" or "max_skew"
    max_skew_ms: float = 100.0
    reject_over_skew: bool = False
    poll_timeout_ms: float = 200.0


@dataclass
class ActConfig:
    tick_hz: float = 10.0
    vl_reuse: int = 4                  # a fresh VL feature is wanted every N ticks
    max_sensor_age_ms: float = 200.0
    max_robot_age_ms: float = 200.0
    max_vl_age_ms: float = 2000.0      # since the VL feature was published (encode finished)
    max_frame_age_ms: float = 2500.0   # since the oldest of its 5 frames was captured (camera clock)
    clamp_mm: float = 0.1              # |dx|,|dy|,|dz| per tick
    clamp_deg: float = 0.1             # |da|,|db|,|dr| per tick
    auto_start: bool = False
    rt_priority: int = 0               # >0: SCHED_FIFO priority of the tick thread (needs CAP_SYS_NICE)
    nice: int = 0                      # used when rt_priority is 0; < 0 needs CAP_SYS_NICE


@dataclass
class RecordConfig:
    out_dir: str = "sessions"
    save_data: bool = False
    flush_every: int = 10


@dataclass
class SuperviseConfig:
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 10.0
    stop_timeout_s: float = 10.0
    hang_timeout_s: float = 10.0       # an up process whose heartbeat is older than this is killed and restarted


@dataclass
class StatConfig:
    stale_periods: float = 3.0         # a stream older than this many periods is red
    warn_periods: float = 1.5


@dataclass
class Config:
    instance: str = "default"
    robot_ip: str = "127.0.0.1"
    shm: ShmConfig = field(default_factory=ShmConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    robot: RobotConfig = field(default_factory=RobotConfig)
    sensor: SensorConfig = field(default_factory=SensorConfig)
    command: CommandConfig = field(default_factory=CommandConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    vl: VlConfig = field(default_factory=VlConfig)
    act: ActConfig = field(default_factory=ActConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    supervise: SuperviseConfig = field(default_factory=SuperviseConfig)
    stat: StatConfig = field(default_factory=StatConfig)

    # ---- derived values (never stored in files)
    def address(self, template: str) -> str:
        """Fill {robot_ip} in a connect address."""
        return template.format(robot_ip=self.robot_ip)

    @property
    def sensor_channels(self) -> int:
        return self.sensor.ascan_len + 1


# --------------------------------------------------------------------------- loading
_CHOICES = {
    ("sensor", "force_position"): ("first", "last"),
    ("sensor", "nonfinite_policy"): ("drop", "keep"),
    ("model", "backbone"): ("compact", "qwen2.5-vl"),
    ("model", "flow_solver"): ("euler", "rk4"),
    ("model", "act_dtype"): ("float32", "bfloat16", "float16"),
    ("vl", "view_policy"): ("newest", "max_skew"),
    ("camera", "channel_order"): ("RGB", "BGR"),
}
_POSITIVE = {
    "rate_hz", "tick_hz", "ring_depth", "window", "width", "height", "ascan_len",
    "results_depth", "flow_steps", "flow_horizon", "vl_reuse", "rcvbuf_bytes",
    "clamp_mm", "clamp_deg", "flush_every", "hang_timeout_s", "decode_workers", "rcvhwm", "sndhwm", "act_threads", "vl_threads",
}


def _coerce(where: str, value: Any, annotation: Any) -> Any:
    """Check a TOML value against a field's annotation; ints are accepted for floats."""
    kind = annotation if isinstance(annotation, type) else typing.get_origin(annotation) or annotation
    kind = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}.get(kind, kind)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"config key {where}: expected int, got {value!r}")
    if isinstance(kind, type) and not isinstance(value, kind):
        raise ConfigError(f"config key {where}: expected {kind.__name__}, got {value!r}")
    return value


def _apply(obj: Any, table: dict, path: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in table.items():
        where = f"{path}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key '{where}' (known: {', '.join(sorted(fields))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where}: expected a table, got {value!r}")
            _apply(current, value, f"{where}.")
        else:
            setattr(obj, key, _coerce(where, value, fields[key].type))


def validate(cfg: Config) -> Config:
    """Cross-field and range checks; raises ConfigError naming the key."""
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"config key {section}.{key}: {value!r} is not one of {', '.join(allowed)}")
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(section):
            continue
        for g in dataclasses.fields(section):
            value = getattr(section, g.name)
            if g.name in _POSITIVE and not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"config key {f.name}.{g.name}: must be > 0, got {value!r}")
    if len(cfg.camera.views) != 5 or len(set(cfg.camera.views)) != 5:
        raise ConfigError("config key camera.views: exactly 5 distinct view names are required")
    if len(cfg.command.start_joints) != 6:
        raise ConfigError("config key command.start_joints: 6 values are required")
    if not cfg.instance or "/" in cfg.instance or "." in cfg.instance:
        raise ConfigError(f"config key instance: {cfg.instance!r} must be non-empty without '/' or '.'")
    return cfg


def _parse_override(text: str) -> dict:
    """'act.tick_hz=20' -> {'act': {'tick_hz': 20}}; a value that is not TOML is a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    table: dict = {}
    node = table
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return table


def default_config_path(instance: str) -> Path | None:
    path = CONFIG_DIR / f"{instance}.toml"
    return path if path.is_file() else None


def load(instance: str = "default", path: str | os.PathLike | None = None,
         overrides: list[str] | tuple = ()) -> Config:
    """Build the config of an instance; raises ConfigError with a one-line message."""
    cfg = Config(instance=instance)
    source = Path(path) if path else default_config_path(instance)
    if source is not None:
        try:
            table = tomllib.loads(source.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source}: {exc}") from None
        table.pop("instance", None)  # the instance comes from the command line
        _apply(cfg, table, "")
    for text in overrides:
        _apply(cfg, _parse_override(text), "")
    cfg.instance = instance
    return validate(cfg)


def add_arguments(parser) -> None:
    """The config flags every process takes."""
    parser.add_argument("--instance", default="default", help="instance name (segment names, config file)")
    parser.add_argument("--config", default=None, help="TOML file (default /etc/shm-vla/<instance>.toml if present)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")


def from_args(args) -> Config:
    """Config from parsed argparse args; on error print one line and exit 2."""
    try:
        return load(args.instance, args.config, args.overrides)
    except ConfigError as exc:
        print(f"shm-vla: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
