"""Typed configuration: built-in deployed defaults, a TOML file, then CLI overrides.

Resolution order (later wins):
  1. the dataclass defaults below (the deployed values);
  2. a TOML file: ``--config PATH``, else /etc/shm-vla/<instance>.toml if it exists;
  3. ``--set section.key=value`` overrides from the command line (values parsed as TOML).

Every key is checked: an unknown key or a value of the wrong type is a ConfigError,
which the CLI prints as one line and exits with code 2 (a key removed in this version is
still accepted, with a warning, for one version: REMOVED_KEYS). Beyond types: no float is NaN or
infinite, every address parses, every allowlist entry is an IPv4 address or network, and
every safety key (SAFETY_CEILINGS) is positive and within its hard ceiling. `from_args`
also checks what depends on this machine (the groups named exist), so a process with a
bad configuration stops before it creates anything.
"""
from __future__ import annotations

import dataclasses
import grp
import ipaddress
import math
import os
import re
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
    attach_timeout_s: float = 120.0   # a reader waits this long for a ring it can use (process.attach_when_ready)
    results_depth: int = 600   # action results kept (60 s at 10 Hz)


@dataclass
class CameraConfig:
    bind: str = "tcp://0.0.0.0:5555"
    allow: list = field(default_factory=list)   # sender IPv4 addresses/networks; empty: any sender
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


@dataclass
class SensorConfig:
    bind: str = "0.0.0.0:9999"
    allow: list = field(default_factory=list)   # sender IPv4 addresses/networks; empty: any sender
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
    stage_timing: str = "events"       # per-stage tick times: "events" | "graphs" | "off" (model/runner.py)
    act_threads: int = 1               # torch CPU threads of the action process (2 cores: no oversubscription)
    vl_threads: int = 1                # torch CPU threads of the VL process
    seed: int = 0                      # the compact backbone's weights; with action_id, each flow tick's noise


@dataclass
class VlConfig:
    view_policy: str = "same_trigger"  # "same_trigger", "newest" or "max_skew" (workers/vl.py)
    max_skew_ms: float = 100.0
    reject_over_skew: bool = False
    frame_upload: str = "staged"       # "staged" (host copy) or "direct" (from the ring slots; workers/frame_upload.py)


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
class ShadowConfig:
    # A candidate checkpoint run beside act on the same inputs, never commanding (workers/shadow.py).
    checkpoint: str = ""               # empty: no shadow
    nice: int = 10                     # CPU niceness of the shadow process, 0..19: never above normal
    device: str = ""                   # torch device; empty: model.act_device
    dtype: str = ""                    # empty: model.act_dtype
    stream_priority: int = 0           # CUDA stream priority: not above model.act_stream_priority (lower is higher)


@dataclass
class RecordConfig:
    out_dir: str = "sessions"
    save_data: bool = False
    flush_every: int = 10
    group: str = ""                    # if set, session directories and files belong to this group
    reserve_mb: float = 256.0          # below this free on out_dir the recorder pauses (workers/disk_room.py)


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
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
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
# Keys removed (issue 12) because nothing read them. A file that still sets one keeps working
# for this version: the key is ignored with a warning on stderr (the journal under systemd).
# The next version drops this table, and such a key is then an unknown key (exit 2).
REMOVED_KEYS = {
    "robot.dims": "a robot record is always 12 values, 6 joints then 6 pose values (the wire "
                  "format: protocol/robot.py)",
    "vl.poll_timeout_ms": "the VL process waits on its rings in slices of 50 ms (workers/vl.py)",
    "shm.stats_max_processes": "every process has its own stats segment, with no limit on their number",
}


def _warn_removed(where: str) -> None:
    print(f"shm-vla: warning: config key {where} is no longer used and is ignored ({REMOVED_KEYS[where]}); "
          f"remove it from the configuration: a later version refuses it", file=sys.stderr)


_CHOICES = {
    ("sensor", "force_position"): ("first", "last"),
    ("sensor", "nonfinite_policy"): ("drop", "keep"),
    ("model", "backbone"): ("compact", "qwen2.5-vl"),
    ("model", "flow_solver"): ("euler", "rk4"),
    ("model", "act_dtype"): ("float32", "bfloat16", "float16"),
    ("model", "stage_timing"): ("events", "graphs", "off"),
    ("shadow", "dtype"): ("", "float32", "bfloat16", "float16"),
    ("vl", "view_policy"): ("newest", "max_skew", "same_trigger"),
    ("vl", "frame_upload"): ("staged", "direct"),
    ("camera", "channel_order"): ("RGB", "BGR"),
}
_POSITIVE = {
    "rate_hz", "tick_hz", "ring_depth", "window", "width", "height", "ascan_len",
    "results_depth", "flow_steps", "flow_horizon", "vl_reuse", "rcvbuf_bytes",
    "clamp_mm", "clamp_deg", "flush_every", "hang_timeout_s", "attach_timeout_s", "decode_workers", "rcvhwm", "sndhwm", "act_threads", "vl_threads",
    "reserve_mb",
}


@dataclass(frozen=True)
class Ceiling:
    """The hard upper limit of a safety key (docs/DEPLOYMENT.md, "Safety limits")."""
    limit: float
    unit: str
    per_tick: bool = False     # the limit is per second: value x act.tick_hz must stay within it


# Safety keys: each must be finite, > 0 and within its ceiling; anything else is a
# configuration error. Adding a safety key is one line here (and one row in the docs).
SAFETY_CEILINGS = {
    # A tick faster than the robot state (100 Hz) acts again on a state it has already acted on.
    # (First: the clamps' ceilings below depend on it.)
    ("act", "tick_hz"): Ceiling(100.0, "Hz"),
    # The robot's command receiver moves at most 1 mm/s and 1 deg/s per axis: 0.1 per tick at
    # 10 Hz, the default. Checked as clamp x tick_hz, so a faster tick needs a smaller clamp.
    ("act", "clamp_mm"): Ceiling(1.0, "mm/s", per_tick=True),
    ("act", "clamp_deg"): Ceiling(1.0, "deg/s", per_tick=True),
    # Feedback inputs: at 1 mm/s the needle moves at most 0.5 mm (5 ticks) past the newest
    # sample the gate accepts.
    ("act", "max_sensor_age_ms"): Ceiling(500.0, "ms"),
    ("act", "max_robot_age_ms"): Ceiling(500.0, "ms"),
    # Scene context, refreshed every vl_reuse ticks (0.4 s): a feature 5 s old means a broken
    # VL process, not a slow one.
    ("act", "max_vl_age_ms"): Ceiling(5000.0, "ms"),
    # The frames behind that feature, by capture time: the feature's own age limit plus a
    # camera period and an encode, no more.
    ("act", "max_frame_age_ms"): Ceiling(6000.0, "ms"),
    # A hung process is restarted after this; longer than a minute is no supervision.
    ("supervise", "hang_timeout_s"): Ceiling(60.0, "s"),
}
_CEILING_SLACK = 1e-9          # 0.1 x 10.0 must pass however it rounds


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
        if where in REMOVED_KEYS:
            _warn_removed(where)
            continue
        if key not in fields:
            raise ConfigError(f"unknown config key '{where}' (known: {', '.join(sorted(fields))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where}: expected a table, got {value!r}")
            _apply(current, value, f"{where}.")
        else:
            setattr(obj, key, _coerce(where, value, fields[key].type))


def _check_finite(cfg: Config) -> None:
    """No float anywhere (a key, or an item of a list) may be NaN or infinite."""
    for path, value in _leaves(cfg, ""):
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            raise ConfigError(f"config key {path}: {value!r} is not finite")


def _leaves(obj: Any, path: str):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{path}{f.name}.")
        else:
            yield f"{path}{f.name}", value


def _check_safety(cfg: Config) -> None:
    tick_hz = cfg.act.tick_hz
    for (section, key), ceiling in SAFETY_CEILINGS.items():
        value = getattr(getattr(cfg, section), key)
        where = f"config key {section}.{key}"
        if not (isinstance(value, (int, float)) and value > 0):
            raise ConfigError(f"{where}: must be > 0, got {value!r}")
        if ceiling.per_tick:
            if value * tick_hz > ceiling.limit * (1 + _CEILING_SLACK):
                per_tick = ceiling.unit.removesuffix("/s")
                raise ConfigError(f"{where}: {value:g} {per_tick} per tick at act.tick_hz {tick_hz:g} is "
                                  f"{value * tick_hz:g} {ceiling.unit}, over the hard ceiling of "
                                  f"{ceiling.limit:g} {ceiling.unit} (at most {ceiling.limit / tick_hz:g} "
                                  f"{per_tick} per tick)")
        elif value > ceiling.limit:
            raise ConfigError(f"{where}: {value:g} {ceiling.unit} is over the hard ceiling of "
                              f"{ceiling.limit:g} {ceiling.unit}")


# --------------------------------------------------------------------------- addresses
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
ALL_INTERFACES = ("0.0.0.0", "*")


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False


def _host_port(key: str, address: str, form: str, host_ok, scheme: str = "") -> tuple[str, int]:
    host, sep, port = address[len(scheme):].rpartition(":")
    if not (address.startswith(scheme) and sep and host_ok(host) and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"config key {key}: {address!r} is not {form}")
    return host, int(port)


def zmq_bind_address(key: str, endpoint: str) -> tuple[str, int]:
    """'tcp://HOST:PORT' with HOST an IPv4 address or * -> (host, port)."""
    form = "tcp://HOST:PORT (HOST an IPv4 address or *, PORT 1-65535)"
    return _host_port(key, endpoint, form, lambda h: h == "*" or _is_ipv4(h), scheme="tcp://")


def udp_bind_address(key: str, address: str) -> tuple[str, int]:
    """'HOST:PORT' with HOST an IPv4 address (0.0.0.0: every interface) -> (host, port)."""
    return _host_port(key, address, "HOST:PORT (HOST an IPv4 address, PORT 1-65535)", _is_ipv4)


def _check_connect(key: str, cfg: Config, template: str) -> None:
    try:
        endpoint = cfg.address(template)
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"config key {key}: {template!r}: only {{robot_ip}} may be filled in") from None
    form = "tcp://HOST:PORT (HOST an IPv4 address or a host name, PORT 1-65535)"
    _host_port(key, endpoint, form, lambda h: _is_ipv4(h) or bool(_HOSTNAME.fullmatch(h)), scheme="tcp://")


def allowed_networks(key: str, entries: list) -> tuple:
    """An allowlist ['192.168.1.20', '10.0.0.0/24'] -> IPv4 networks; [] -> () (any sender)."""
    networks = []
    for entry in entries:
        try:
            if not isinstance(entry, str):
                raise TypeError("not a string")
            networks.append(ipaddress.IPv4Network(entry))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config key {key}: {entry!r} is not an IPv4 address or network ({exc})") from None
    return tuple(networks)


def _check_addresses(cfg: Config) -> None:
    if not (_is_ipv4(cfg.robot_ip) or _HOSTNAME.fullmatch(cfg.robot_ip)):
        raise ConfigError(f"config key robot_ip: {cfg.robot_ip!r} is not an IPv4 address or a host name")
    zmq_bind_address("camera.bind", cfg.camera.bind)
    udp_bind_address("sensor.bind", cfg.sensor.bind)
    _check_connect("robot.connect", cfg, cfg.robot.connect)
    _check_connect("command.connect", cfg, cfg.command.connect)
    allowed_networks("camera.allow", cfg.camera.allow)
    allowed_networks("sensor.allow", cfg.sensor.allow)


def validate(cfg: Config) -> Config:
    """Cross-field and range checks; raises ConfigError naming the key."""
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"config key {section}.{key}: {value!r} is not one of {', '.join(allowed)}")
    _check_finite(cfg)
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
    _check_safety(cfg)
    _check_addresses(cfg)
    _check_shadow(cfg)
    return cfg


def _check_shadow(cfg: Config) -> None:
    """A shadow runs below act: never a higher CPU or CUDA priority. (Its checkpoint file is
    checked where it is loaded, by `shm-vla run` and the shadow process, not by every process:
    a bad shadow must never keep the live loop from starting.)"""
    if not 0 <= cfg.shadow.nice <= 19:
        raise ConfigError(f"config key shadow.nice: {cfg.shadow.nice} is not in 0..19 (a shadow never runs "
                          "above normal priority)")
    if cfg.shadow.stream_priority < cfg.model.act_stream_priority:
        raise ConfigError(f"config key shadow.stream_priority: {cfg.shadow.stream_priority} is a higher CUDA "
                          f"priority than act's (model.act_stream_priority {cfg.model.act_stream_priority}; "
                          "lower is higher)")


# --------------------------------------------------------------------------- this machine
def group_id(key: str, name: str) -> int | None:
    """The gid of the group a key names (None for ""); a missing group is a ConfigError."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"config key {key}: group {name!r} does not exist on this machine") from None


def check_host(cfg: Config) -> Config:
    """What depends on this machine: the groups named exist (before any segment is made)."""
    group_id("shm.group", cfg.shm.group)
    group_id("record.group", cfg.record.group)
    return cfg


def check_member(key: str, name: str) -> None:
    """This process may give files to the group (it is a member, or root)."""
    gid = group_id(key, name)
    if gid is not None and os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        raise ConfigError(f"config key {key}: this user is not a member of group {name!r}")


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
    """Config from parsed argparse args, checked against this machine; on error print one
    line and exit 2."""
    try:
        return check_host(load(args.instance, args.config, args.overrides))
    except ConfigError as exc:
        print(f"shm-vla: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
