"""Getting a model: the demo model the package ships, and models on the Hugging Face Hub.

What a MODEL argument (`llmrun.load`, every command) names, in this order:
1. a local file or folder: a path that exists always wins;
2. "demo": stories260K, the 260K-parameter model in llmrun/demo/ (with its 512-token tokenizer);
3. a Hub reference REPO[:QUANT] in llama.cpp's `-hf` spelling (`bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M`;
   an `hf.co/` or `huggingface.co/` prefix, as ollama writes it, is accepted), or REPO:FILE.gguf for one
   exact file.

A reference picks files of its repository (`choose`):
- in a repository of GGUF files, the model whose file name carries the quantization tag (case-insensitive;
  without a tag the only model, else Q4_K_M, else Q8_0, as llama.cpp does), with every part of a split
  model; or one exact file (`file`). A tag that matches several models, or none, is an error that lists
  the quantizations the repository has (REPO:FILE.gguf then picks one);
- in a Hugging Face model repository (config.json + *.safetensors): the config, generation config,
  tokenizer files and weights, nothing else.

Files live in the standard Hugging Face cache (HF_HUB_CACHE, by default ~/.cache/huggingface/hub), shared
with every tool built on huggingface_hub, which does the downloading (resuming a dropped connection,
HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE, its progress bars). `find_model` looks in the cache first, without
the network, and downloads only what is missing. Every file downloaded is checked against the size and
hash the Hub lists for it (sha256 for LFS files, the git blob id for the others); a file that does not
match is removed from the cache and the pull fails, so a corrupt file is never used.

huggingface_hub is imported only when the Hub or its cache is needed: `import llmrun`, the demo model and
local files never import it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HubError, InvalidArgumentError, LLMError
from .formats.gguf import SPLIT_NAME, read_gguf_model
from .formats.safetensors import SafetensorsSet

DEMO_NAME = "demo"
DEMO_MODEL = Path(__file__).resolve().parent / "demo" / "stories260K.bin"  # its tokenizer.bin lies beside it
HUB_PREFIXES = ("https://huggingface.co/", "huggingface.co/", "https://hf.co/", "hf.co/")
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"  # an owner or repository name on the Hub
# REPO[:QUANT], or REPO:FILE.gguf for one exact file (what `llmrun list` shows where no tag names it alone)
REFERENCE = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?::(?P<quant>[A-Za-z0-9._/-]+))?")
# A name ending so is a model file that is not there, not a repository.
FILE_SUFFIXES = (".gguf", ".bin", ".safetensors", ".pt", ".pth")
NOT_MODELS = ("mmproj", "imatrix")  # GGUF files of model repositories that are not language models
DEFAULT_TAGS = ("Q4_K_M", "Q8_0")  # llama.cpp's choice where a repository has several quantizations
HF_FILES = frozenset({"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                      "special_tokens_map.json", "tokenizer.model", "chat_template.jinja",
                      "model.safetensors.index.json"})  # with the *.safetensors: what a Hugging Face folder needs
# Quantization names as they appear in GGUF file names (Q4_K_M, IQ4_XS, Q8_0, F16, BF16, MXFP4_MOE, TQ1_0 ...)
QUANT_IN_NAME = re.compile(r"(?i)(?<![a-z0-9])(i?q\d+(?:_[a-z0-9]+)*|bf16|fp?16|fp?32|mxfp4(?:_moe)?|tq\d_\d)(?=[.-])")
DEMO_HINT = ("llmrun: running the built-in demo model (stories260K, 260K parameters: short children's stories "
             "only); for a real model: llmrun pull REPO[:QUANT], e.g. llmrun pull "
             "bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M")

Announce = Callable[[str], None]


@dataclass(frozen=True)
class Reference:
    """A model on the Hub: a repository, and a quantization tag or an exact file name (or neither)."""

    repo: str
    quant: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        return self.repo + (f":{self.quant}" if self.quant else "") + (f":{self.file}" if self.file else "")


@dataclass(frozen=True)
class Choice:
    """The files of a repository that make one model: a GGUF model's file (or its split parts, in order), or
    a Hugging Face folder's files (config.json first)."""

    files: tuple[str, ...]
    quant: str | None  # the quantization in the file name; None for a folder or a name without one
    is_folder: bool


def parse_reference(text: str, file: str | None = None) -> Reference | None:
    """The Hub reference `text` spells, or None where it cannot be one (more than one slash, a model file's
    suffix ...). InvalidArgumentError where it has the hf.co/ prefix but no repository after it."""
    prefixed = next((p for p in HUB_PREFIXES if text.lower().startswith(p)), None)
    name = text[len(prefixed):] if prefixed else text
    m = REFERENCE.fullmatch(name)
    # the Hub refuses "--" and ".." in a repository id: such a name is a mistyped path, not a reference
    if m is None or m["repo"].lower().endswith(FILE_SUFFIXES) or "--" in m["repo"] or ".." in m["repo"]:
        if prefixed:
            raise InvalidArgumentError(f"{text!r} is not a Hub reference: expected {prefixed}OWNER/REPO[:QUANT]",
                                       param="model")
        return None
    quant = m["quant"]
    if quant and quant.lower().endswith(".gguf"):  # REPO:FILE.gguf
        if file is not None and file != quant:
            raise InvalidArgumentError(f"{text} names the file {quant}, --file another: {file}", param="model")
        quant, file = None, quant
    elif quant and "/" in quant:
        raise InvalidArgumentError(f"{text!r}: a quantization tag has no '/' (a file is named REPO:PATH.gguf)",
                                   param="model")
    if quant and file:
        raise InvalidArgumentError(f"{text}: give a quantization tag or a file name (--file), not both", param="model")
    return Reference(m["repo"], quant, file)


def find_model(name: str, announce: Announce | None = None) -> Path:
    """The local path of the model `name` names: the path itself where it exists, the demo model for "demo"
    (`announce` is told so), else the Hub reference's files in the cache, downloaded first when they are
    missing (`announce` is told that too). A name that is neither keeps its path, whose reader says it is
    missing."""
    path = Path(name)
    if path.exists():
        return path
    if name == DEMO_NAME:
        if announce is not None:
            announce(DEMO_HINT)
        return DEMO_MODEL
    ref = parse_reference(name)
    if ref is None or Path(name.split("/")[0]).is_dir():  # models/x with a models/ folder here: a path
        return path
    cached = find_cached(ref)
    if cached is not None:
        return cached
    hf = _huggingface_hub()
    if hf.constants.is_offline_mode():
        raise HubError(f"{ref} is not in the Hugging Face cache ({cache_dir()}) and HF_HUB_OFFLINE is set: "
                       f"run `llmrun pull {ref}` with network access first (`llmrun list` shows what is cached)")
    if announce is not None:
        announce(f"llmrun: {ref} is not in the cache ({cache_dir()}): downloading it from {hf.constants.ENDPOINT}")
    return pull(ref)


# --- choosing a repository's files ----------------------------------------------------------------------

def gguf_models(files: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The GGUF models among a repository's files: first file -> every file of the model (a split model's
    parts in order; a split model with a part missing is left out, as are projectors and imatrix files)."""
    present = set(files)
    models: dict[str, tuple[str, ...]] = {}
    for f in sorted(files):
        folder, _, base = f.rpartition("/")
        if not base.lower().endswith(".gguf") or any(word in base.lower() for word in NOT_MODELS):
            continue
        m = SPLIT_NAME.fullmatch(base)
        if m is None:
            models[f] = (f,)
        elif int(m["no"]) == 1:
            count = int(m["count"])
            prefix = f"{folder}/" if folder else ""
            parts = tuple(f"{prefix}{m['prefix']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1))
            if present.issuperset(parts):
                models[f] = parts
    return models


def quant_of(path: str) -> str | None:
    """The quantization a GGUF file's name carries (upper case), None where it names none."""
    found = QUANT_IN_NAME.findall(path.rpartition("/")[2])
    return found[-1].upper() if found else None


def _has_tag(path: str, tag: str) -> bool:
    """Whether the quantization `tag` is a whole word of the path (Q4_K does not match Q4_K_M)."""
    return re.search(rf"(?i)(?<![a-z0-9]){re.escape(tag)}(?=[./-])", path) is not None


def _available(models: dict[str, tuple[str, ...]]) -> str:
    names = sorted({quant_of(first) or first for first in models})
    return "available: " + ", ".join(names) if names else "it has no GGUF model files"


def choose(ref: Reference, files: Sequence[str]) -> Choice:
    """The files of `files` (a repository's, or a cached snapshot's) that make the model `ref` asks for;
    HubError naming what is there where the reference fits none or several."""
    models = gguf_models(files)
    if ref.file is not None:
        parts = next((p for p in models.values() if ref.file in p), None)
        if parts is None:
            what = "is not a GGUF model file" if ref.file in files else "is not in the repository"
            raise HubError(f"{ref.repo}: {ref.file} {what}; {_available(models)}")
        return Choice(parts, quant_of(parts[0]), is_folder=False)
    if not models:
        if "config.json" in files and any("/" not in f and f.endswith(".safetensors") for f in files):
            if ref.quant:
                raise HubError(f"{ref.repo} is a Hugging Face model (safetensors) without quantized files: use "
                               f"{ref.repo} without :{ref.quant} (llmrun.load(..., quantize='q8_0') converts at load)")
            wanted = [f for f in files if f in HF_FILES or ("/" not in f and f.endswith(".safetensors"))]
            return Choice(tuple(sorted(wanted, key=lambda f: f != "config.json")), None, is_folder=True)
        raise HubError(f"{ref.repo} has neither GGUF model files nor a Hugging Face model (config.json and "
                       f"*.safetensors); its files: {', '.join(sorted(files)[:12]) or 'none'}")
    if ref.quant is None and len(models) == 1:
        (parts,) = models.values()
        return Choice(parts, quant_of(parts[0]), is_folder=False)
    for tag in (ref.quant,) if ref.quant else DEFAULT_TAGS:
        found = [parts for first, parts in models.items() if _has_tag(first, tag)]
        if len(found) > 1:
            raise HubError(f"{ref.repo}: the quantization {tag} matches {len(found)} files ("
                           f"{', '.join(p[0] for p in found)}); choose one as {ref.repo}:FILE.gguf")
        if found:
            return Choice(found[0], quant_of(found[0][0]) or tag.upper(), is_folder=False)
    if ref.quant:
        raise HubError(f"{ref.repo} has no {ref.quant} file; {_available(models)}")
    raise HubError(f"{ref.repo} has {len(models)} GGUF models and none is {' or '.join(DEFAULT_TAGS)}: choose one "
                   f"as {ref.repo}:QUANT; {_available(models)}")


# --- the cache --------------------------------------------------------------------------------------------

def _huggingface_hub() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants  # a submodule: not an attribute of the package until imported
    except ImportError as e:
        raise HubError(f"models from the Hugging Face Hub need the huggingface_hub package ({e}): "
                       "pip install huggingface_hub") from None
    return huggingface_hub


def cache_dir() -> Path:
    """Where huggingface_hub keeps its models (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)."""
    return Path(_huggingface_hub().constants.HF_HUB_CACHE)


def _snapshots(repo: str) -> list[Path]:
    """The cached snapshots of a model repository, the one its main branch points at first."""
    root = cache_dir() / ("models--" + repo.replace("/", "--"))  # huggingface_hub's repo_folder_name
    snapshots = root / "snapshots"
    if not snapshots.is_dir():
        return []
    main = root / "refs" / "main"
    head = main.read_text().strip() if main.is_file() else None
    return sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: (p.name != head, -p.stat().st_mtime))


def _snapshot_files(snapshot: Path) -> list[str]:
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def find_cached(ref: Reference) -> Path | None:
    """The local path of `ref`'s model in the cache, or None where the cache lacks (part of) it. No network."""
    for snapshot in _snapshots(ref.repo):
        files = _snapshot_files(snapshot)
        try:
            choice = choose(ref, files)
        except HubError:
            if ref.quant and sum(_has_tag(first, ref.quant) for first in gguf_models(files)) > 1:
                raise  # the tag is ambiguous among cached files: say so rather than "not cached"
            continue
        if choice.is_folder and not _folder_complete(snapshot, files):
            continue  # a pull stopped halfway (or another tool's partial download): not a model yet
        return snapshot if choice.is_folder else snapshot / choice.files[0]
    return None


def _folder_complete(snapshot: Path, files: Sequence[str]) -> bool:
    """Whether a cached Hugging Face folder has a tokenizer and every weight file: all those its
    model.safetensors.index.json names, or its one unsharded *.safetensors."""
    if not {"tokenizer.json", "tokenizer.model"} & set(files):
        return False
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return shards <= set(files)
    weights = [f for f in files if "/" not in f and f.endswith(".safetensors")]
    return len(weights) == 1 and re.search(r"-\d+-of-\d+\.safetensors$", weights[0]) is None


# --- downloading ------------------------------------------------------------------------------------------

def pull(ref: Reference) -> Path:
    """Downloads `ref`'s model into the cache (files already there are only checked for being current) and
    returns its local path: the GGUF file (a split model's first part) or the Hugging Face folder."""
    hf = _huggingface_hub()
    if hf.constants.is_offline_mode():
        cached = find_cached(ref)
        if cached is not None:  # as hf_hub_download offline: what the cache holds
            return cached
        raise HubError(f"cannot pull {ref}: HF_HUB_OFFLINE is set and the cache lacks it")
    with _hub_errors(ref):
        info = hf.HfApi().model_info(ref.repo, files_metadata=True)
    listing = {s.rfilename: s for s in info.siblings or []}
    choice = choose(ref, list(listing))
    local: list[Path] = []
    for name in choice.files:
        known = hf.try_to_load_from_cache(ref.repo, name, revision=info.sha) if info.sha else None
        with _hub_errors(ref, name):
            path = Path(hf.hf_hub_download(ref.repo, name))
        if not isinstance(known, str):  # downloaded now: check it before anything uses it
            _verify(ref, name, path, listing[name])
        local.append(path)
    return local[0].parent if choice.is_folder else local[0]


def _verify(ref: Reference, name: str, path: Path, listed: Any) -> None:
    """Compares a downloaded file with the size and hash the Hub lists; removes it from the cache (pointer and
    blob) and raises HubError where they differ."""
    blob = path.resolve()
    size = blob.stat().st_size
    problem = None
    if listed.size is not None and size != listed.size:
        problem = f"{size:,} bytes, the Hub lists {listed.size:,}"
    elif listed.lfs is not None:
        digest = _file_hash(blob, hashlib.sha256())
        if digest != listed.lfs.sha256:
            problem = f"sha256 {digest}, the Hub lists {listed.lfs.sha256}"
    elif listed.blob_id is not None:
        git = hashlib.sha1(f"blob {size}\0".encode())  # git's object id of the file's content
        digest = _file_hash(blob, git)
        if digest != listed.blob_id:
            problem = f"git blob id {digest}, the Hub lists {listed.blob_id}"
    if problem is not None:
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise HubError(f"{ref.repo}/{name} arrived corrupt ({problem}); it was removed from the cache: pull again")


def _file_hash(path: Path, h: Any) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def _hub_errors(ref: Reference, name: str | None = None) -> Iterator[None]:
    """huggingface_hub's and the network's exceptions as HubErrors that say what to do."""
    from huggingface_hub import constants, errors

    try:  # the HTTP library huggingface_hub 2.x uses; 1.x used httpx
        from httpx2 import TransportError
    except ImportError:
        from httpx import TransportError

    endpoint = constants.ENDPOINT
    try:
        yield
    except errors.GatedRepoError:
        raise HubError(f"{ref.repo} is a gated model: accept its licence on {endpoint}/{ref.repo} (logged in), then "
                       f"set HF_TOKEN to an access token of that account ({endpoint}/settings/tokens)") from None
    except errors.RepositoryNotFoundError:
        raise HubError(f"no model repository {ref.repo} on {endpoint} (or it is private: set HF_TOKEN to a token "
                       "that may read it)") from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{ref.repo}: no such revision on {endpoint}") from None
    except errors.EntryNotFoundError:
        raise HubError(f"{ref.repo}: no file {name} on {endpoint}") from None
    except errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        hint = ": set HF_TOKEN to a token that may read it" if status in (401, 403) else ""
        raise HubError(f"{ref.repo}: {endpoint} answered HTTP {status}{hint}") from None
    except (TransportError, errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError) as e:
        raise HubError(f"cannot reach {endpoint} for {ref} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                       "models in the cache run without the network (`llmrun list`)") from None
    except OSError as e:  # huggingface_hub's "Consistency check failed" after a transfer ran short
        raise HubError(f"{ref.repo}: downloading {name} failed ({str(e).splitlines()[0]}); run it again") from None


# --- what the cache holds: `llmrun list` and `llmrun rm` ---------------------------------------------------

@dataclass(frozen=True)
class CachedModel:
    """One model in the cache: its reference, local path, files (huggingface_hub's CachedFileInfo), bytes on
    disk and when one of its files was last read (a POSIX time; as exact as the file system's atimes)."""

    reference: Reference
    path: Path
    files: tuple[Any, ...]
    quant: str | None
    size: int
    last_used: float


def cached_models() -> list[CachedModel]:
    """Every model in the Hugging Face cache, by repository; a repository's other files (a dataset, a
    projector, a half-downloaded split model) are not models and are left out."""
    hf = _huggingface_hub()
    try:
        cache = hf.scan_cache_dir(cache_dir())
    except hf.CacheNotFound:
        return []
    found = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model":
            continue
        for revision in sorted(repo.revisions, key=lambda r: -r.last_modified):
            found += _revision_models(repo.repo_id, revision)
    return found


def _revision_models(repo: str, revision: Any) -> list[CachedModel]:
    by_name = {f.file_path.relative_to(revision.snapshot_path).as_posix(): f for f in revision.files}
    models = gguf_models(list(by_name))
    groups = [(parts, False) for parts in models.values()]
    if not models:
        try:
            groups = [(choose(Reference(repo), list(by_name)).files, True)]
        except HubError:
            return []
    out = []
    for parts, is_folder in groups:
        quant = None if is_folder else quant_of(parts[0])
        if is_folder:
            ref = Reference(repo)
        elif quant is not None and sum(_has_tag(first, quant) for first in models) == 1:
            ref = Reference(repo, quant)
        else:
            ref = Reference(repo, file=parts[0])
        files = tuple(by_name[p] for p in parts)
        path = revision.snapshot_path if is_folder else revision.snapshot_path / parts[0]
        out.append(CachedModel(ref, path, files, quant, sum(f.size_on_disk for f in files),
                               max(f.blob_last_accessed for f in files)))
    return out


def describe(model: CachedModel) -> tuple[str, int | None]:
    """A cached model's architecture and parameter count, from its headers alone ("?" and None where they
    cannot be read)."""
    try:
        if model.path.is_dir():
            config = json.loads((model.path / "config.json").read_text(encoding="utf-8"))
            arch = (config.get("architectures") or ["?"])[0]
            return str(arch), sum(math.prod(t.shape) for t in SafetensorsSet(model.path).values())
        f = read_gguf_model(model.path)
        return str(f.metadata.get("general.architecture", "?")), sum(math.prod(t.ne) for t in f.tensors.values())
    except (LLMError, OSError, ValueError, AttributeError):
        return "?", None


def remove(ref: Reference) -> tuple[int, int]:
    """Removes a model from the cache through huggingface_hub's cache API: the whole repository (every cached
    revision) for a bare REPO, only that model's files for REPO:QUANT or a file; a blob another cached file
    still uses stays. Returns the files removed and the bytes freed; HubError where the cache lacks it."""
    hf = _huggingface_hub()
    try:
        cache = hf.scan_cache_dir(cache_dir())
    except hf.CacheNotFound:
        cache = None
    repo = next((r for r in cache.repos if r.repo_type == "model" and r.repo_id == ref.repo), None) if cache else None
    if repo is None:
        raise HubError(f"{ref.repo} is not in the Hugging Face cache ({cache_dir()}); `llmrun list` shows what is")
    if ref.quant is None and ref.file is None:
        files = [f for r in repo.revisions for f in r.files]
        strategy = cache.delete_revisions(*(r.commit_hash for r in repo.revisions))
    else:
        matching = [(r, m) for r in repo.revisions for m in _revision_models(repo.repo_id, r)
                    if _same_model(ref, m, r.snapshot_path)]
        firsts = {m.files[0].file_path.relative_to(r.snapshot_path).as_posix() for r, m in matching}
        if len(firsts) > 1:  # as `pull` refuses an ambiguous tag, so does rm: never remove more than asked
            raise HubError(f"{ref} matches {len(firsts)} cached models ({', '.join(sorted(firsts))}); remove one as "
                           f"{ref.repo}:FILE.gguf")
        files = [f for _, m in matching for f in m.files]
        if not files:
            cached = ", ".join(str(m.reference) for r in repo.revisions for m in _revision_models(repo.repo_id, r))
            raise HubError(f"{ref} is not in the cache; cached from {ref.repo}: {cached or 'no models'}")
        strategy = cache.delete_files(*files)
    freed = strategy.expected_freed_size
    strategy.execute()
    return len(files), freed


def _same_model(asked: Reference, model: CachedModel, snapshot: Path) -> bool:
    """Whether a cached model is the one REPO:QUANT or REPO:FILE.gguf asks for."""
    names = [f.file_path.relative_to(snapshot).as_posix() for f in model.files]
    return asked.file in names if asked.file is not None else _has_tag(names[0], asked.quant or "")
