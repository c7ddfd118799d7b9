"""Where a model or tokenizer comes from: a local folder, or a Hugging Face hub id when the hub can be reached.

Every loader asks `locate(name, field)` before `from_pretrained`, so that

* a missing local path fails at once: `model_name_or_path: outputs/run: no such folder`;
* a hub id on a machine that cannot reach the hub fails in seconds (one connection attempt, 3 s at most)
  instead of after the hub client's retries (~70 s measured offline), unless the hub cache already holds it:
  then offline mode is switched on (HF_HUB_OFFLINE, the hub client's documented switch) and the cache serves it.
"""
import os
import re
import socket
from functools import lru_cache
from typing import Optional
from urllib.parse import urlparse

from mlm.errors import ConfigError

# What a hub id looks like: `name` or `owner/name`, of letters, digits and `-_.` (not starting with a dot).
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
CONNECT_TIMEOUT_S = 3.0


def locate(name: str, field: str) -> str:
    """`name` as the loaders should take it (a local folder, `~` expanded, or a hub id); ConfigError when it
    names nothing that can be loaded: a missing path, a file, or a hub id while the hub is unreachable."""
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ConfigError(f"{field}: {name}: a file, not a model folder")
    if _looks_like_path(name):
        raise ConfigError(f"{field}: {name}: no such folder")
    if hub_reachable():
        return name
    go_offline()
    if _in_hub_cache(name):
        return name
    if "/" in name:  # folder/name or owner/name: offline, the folder is the likelier meaning
        raise ConfigError(f"{field}: {name}: no such folder (nor a model id on the Hugging Face hub, which "
                          "cannot be reached from here)")
    raise ConfigError(
            f"{field}: {name!r} is not a local folder and the Hugging Face hub cannot be reached from here; "
            f"pass a checkpoint folder (e.g. --{field} outputs/pretrain-demo), or download it where the hub is "
            "reachable (HF_HUB_OFFLINE=1 then reads it from the hub cache)")
    return name


def _looks_like_path(name: str) -> bool:
    """A name that cannot be a hub id, or whose first folder exists here: the user meant a local path."""
    if not _HUB_ID.match(name):  # ./x, ~/x, /x, a/b/c, x/, spaces, backslashes, ...
        return True
    return "/" in name and os.path.isdir(name.split("/", 1)[0])


def hub_offline() -> bool:
    """Offline mode as the hub client reads it (HF_HUB_OFFLINE, or transformers' TRANSFORMERS_OFFLINE)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


@lru_cache(maxsize=None)
def _endpoint_reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
        return True
    except OSError:  # no DNS, refused, timed out
        return False


def hub_reachable() -> bool:
    """One TCP connection to the hub endpoint (HF_ENDPOINT, e.g. a mirror), cached per process."""
    if hub_offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return _endpoint_reachable(url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))


def go_offline() -> None:
    """Switch the hub client to its cache only, for this process and the ones it starts: no further lookups
    that can only time out. huggingface_hub reads the variable at import, so its constant is set too."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    constants.HF_HUB_OFFLINE = True


def _in_hub_cache(repo_id: str) -> Optional[str]:
    """A cached file of the repo (any model or tokenizer has one of these), or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "tokenizer_config.json"):
        try:
            found = try_to_load_from_cache(repo_id, filename)
        except ValueError:  # not a valid repo id after all (e.g. "a--b")
            return None
        if isinstance(found, str):
            return found
    return None


def load_hub_dataset(name: str, config: Optional[str] = None, streaming: bool = False):
    """datasets.load_dataset(name, config), streamed when `streaming`: the one hub loader of the task data and the
    pretraining corpus. Whatever stops it (offline, an unknown name, a missing config, ...) is one DataError line."""
    from mlm.core.records import first_line
    from mlm.errors import DataError

    try:
        import datasets

        return datasets.load_dataset(name, config, streaming=True) if streaming else datasets.load_dataset(name, config)
    except Exception as e:  # several exception types, all fixable by passing files
        raise DataError(f"dataset_name {name!r}: cannot load it from the Hugging Face hub ({first_line(e)[:200]}); "
                        "pass local files with train_file instead") from None


def check_sources(cfg) -> None:
    """Locate the tokenizer a run's config names, locate the model and check a local model folder's files
    (mlm.core.hf.check_checkpoint_dir), and check the hub for --push_to_hub, before any data is read or any folder
    written."""
    from mlm.core.hf import check_checkpoint_dir

    if getattr(cfg, "tokenizer_name", None):
        locate(cfg.tokenizer_name, "tokenizer_name")
    if getattr(cfg, "model_name_or_path", None):
        check_checkpoint_dir(cfg.model_name_or_path, allow_pickle=getattr(cfg, "allow_pickle_weights", False))
    check_push(cfg)


def tokenizer_source(cfg) -> tuple[str, str]:
    """The tokenizer a run loads and the field that named it: `tokenizer_name`, else the model's own."""
    if cfg.tokenizer_name:
        return cfg.tokenizer_name, "tokenizer_name"
    return cfg.model_name_or_path, "model_name_or_path"


# Never uploaded: training state, old runs moved aside, the run's lock.
PUSH_IGNORE = ["checkpoints/*", "run.lock", "*.tmp"]


def check_push(cfg) -> None:
    """--push_to_hub needs the hub at the start: a run of hours must not learn at its end that it cannot upload."""
    if cfg.push_to_hub and not hub_reachable():
        raise ConfigError("push_to_hub: the Hugging Face hub cannot be reached from here; drop --push_to_hub and "
                          "upload output_dir later (`hf upload REPO OUTPUT_DIR`)")


def push_to_hub(cfg) -> str:
    """Upload cfg.output_dir to cfg.hub_model_id (created when missing); returns the repository id."""
    from huggingface_hub import HfApi

    repo_id = cfg.hub_model_id or os.path.basename(os.path.abspath(cfg.output_dir))
    api = HfApi(token=cfg.hub_token)
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=cfg.output_dir, ignore_patterns=PUSH_IGNORE,
                      commit_message=f"mlm: {cfg.run_name or os.path.basename(os.path.abspath(cfg.output_dir))}")
    return repo_id
