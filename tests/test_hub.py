"""Models from the Hugging Face Hub (llmrun/hub.py): references, choosing a repository's files, downloading
them through huggingface_hub into its cache, offline use, `llmrun pull`, `list` and `rm`.

The Hub cannot be reached from here, so tests/hub_server.py stands in for it on 127.0.0.1, answering the
requests huggingface_hub makes as the Hub does. huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE and
HF_HUB_OFFLINE once, when it is imported; the `hub` fixture points those settings of the imported module at
the stand-in and a temporary cache, and test_cli_uses_the_environment shows, in fresh processes, that the
environment variables themselves do the same."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import numpy as np
import pytest
from test_cli import in_process, one_line_error

import llmrun
from commands import LLMRUN
from gguf_split import split_gguf
from hub_server import TOKEN, FakeHub, serve
from llmrun.cli import model_name
from llmrun.hub import Reference, cached_models, choose, find_cached, parse_reference, pull

HF_FOLDER = Path(__file__).parent / "data" / "hf" / "llama-tied"
REPO = "test/stories260K-GGUF"
PROMPT = [1, 403, 407, 261, 378]  # "Once upon a time"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub()
    server, url = serve(fake)
    c = huggingface_hub.constants
    monkeypatch.setattr(c, "ENDPOINT", url)
    monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def gguf_repo(hub: FakeHub, models_dir: Path) -> FakeHub:
    """A repository as bartowski's look: one file per quantization (copies of the stories260K files under
    K-quant names, for the names' sake), a projector that is not a language model, a README."""
    hub.add(REPO, {"stories260K-Q4_K_M.gguf": models_dir / "stories260K-q4_0.gguf",
                   "stories260K-Q8_0.gguf": models_dir / "stories260K-q8_0.gguf",
                   "stories260K-F32.gguf": models_dir / "stories260K-f32.gguf",
                   "mmproj-stories260K-f16.gguf": b"not a language model",
                   "README.md": b"# stories260K\n"})
    return hub


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# --- references -------------------------------------------------------------------------------------------

def test_parse_reference() -> None:
    assert parse_reference("bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M") == \
        Reference("bartowski/Llama-3.2-1B-Instruct-GGUF", "Q4_K_M")
    assert parse_reference("hf.co/owner/repo:q8_0") == Reference("owner/repo", "q8_0")
    assert parse_reference("https://huggingface.co/owner/Qwen2.5-0.5B") == Reference("owner/Qwen2.5-0.5B")
    assert parse_reference("owner/repo", file="x.gguf") == Reference("owner/repo", file="x.gguf")
    assert parse_reference("owner/repo:Q8_0/x-Q8_0.GGUF") == Reference("owner/repo", file="Q8_0/x-Q8_0.GGUF")
    with pytest.raises(llmrun.InvalidArgumentError, match="a quantization tag has no '/'"):
        parse_reference("owner/repo:Q8_0/x")
    for path in ["models/stories260K.gguf", "a/b/c", "./repo", "/abs/x", "repo", "owner/", "dir/model.bin"]:
        assert parse_reference(path) is None, path
    with pytest.raises(llmrun.InvalidArgumentError, match="not a Hub reference"):
        parse_reference("hf.co/just-a-name")
    with pytest.raises(llmrun.InvalidArgumentError, match="not both"):
        parse_reference("owner/repo:Q8_0", file="x.gguf")
    assert model_name("hf.co/owner/repo:Q8_0") == "owner/repo:Q8_0"  # the server's default model id


def test_choose_by_tag() -> None:
    """The rules on file names alone: a tag is a whole word of the name, any case; without one, the only
    model or else Q4_K_M or else Q8_0; split parts make one model; projectors and imatrix files are no models."""
    files = ["m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "m-IQ4_XS.gguf", "m-Q8_0.gguf", "mmproj-m-f16.gguf", "imatrix.gguf",
             "big/m-Q6_K-00001-of-00002.gguf", "big/m-Q6_K-00002-of-00002.gguf", "m-Q2_K-00001-of-00002.gguf"]
    pick = lambda quant=None: choose(Reference("o/r", quant), files).files  # noqa: E731
    assert pick() == ("m-Q4_K_M.gguf",)
    assert pick("q4_k_s") == ("m-Q4_K_S.gguf",)
    assert pick("IQ4_XS") == ("m-IQ4_XS.gguf",)
    assert pick("Q6_K") == ("big/m-Q6_K-00001-of-00002.gguf", "big/m-Q6_K-00002-of-00002.gguf")
    for missing in ["Q4_K", "Q4", "Q2_K"]:  # Q2_K: its second part is not there, so it is no model
        with pytest.raises(llmrun.HubError, match=f"has no {missing} file; available: IQ4_XS, Q4_K_M, Q4_K_S, "
                                                  "Q6_K, Q8_0"):
            pick(missing)
    assert choose(Reference("o/r"), ["only-F16.gguf", "README.md"]).files == ("only-F16.gguf",)
    assert choose(Reference("o/r"), ["m-Q8_0.gguf", "m-Q5_K_M.gguf"]).files == ("m-Q8_0.gguf",)
    with pytest.raises(llmrun.HubError, match="none is Q4_K_M or Q8_0: choose one as o/r:QUANT; available: Q5_K_M, "
                                              "Q6_K"):
        choose(Reference("o/r"), ["m-Q5_K_M.gguf", "m-Q6_K.gguf"])


# --- pulling GGUF files -----------------------------------------------------------------------------------

def test_pull_by_exact_tag(gguf_repo: FakeHub, models_dir: Path) -> None:
    path = pull(Reference(REPO, "Q8_0"))
    assert path.name == "stories260K-Q8_0.gguf"
    assert path.read_bytes() == (models_dir / "stories260K-q8_0.gguf").read_bytes()
    # that file and nothing else: its metadata from the Hub (a redirect to the CDN), its bytes from the CDN
    assert [(r.method, r.path) for r in gguf_repo.requests if r.path.endswith(".gguf")] == \
        [("HEAD", f"/{REPO}/resolve/main/stories260K-Q8_0.gguf"), ("GET", f"/cdn/{REPO}/stories260K-Q8_0.gguf")]
    assert str(path).startswith(huggingface_hub.constants.HF_HUB_CACHE)  # the standard cache layout
    assert path.parent.parent.parent.name == "models--test--stories260K-GGUF"
    with llmrun.load(path) as model:
        assert model.generate("Once upon a time", max_tokens=8, temperature=0).startswith(", there was")


def test_pull_case_insensitive_and_default(gguf_repo: FakeHub) -> None:
    assert pull(Reference(REPO, "q8_0")).name == "stories260K-Q8_0.gguf"
    assert pull(Reference(REPO, "f32")).name == "stories260K-F32.gguf"
    assert pull(Reference(REPO)).name == "stories260K-Q4_K_M.gguf"  # several quantizations: Q4_K_M


def test_pull_missing_and_ambiguous_tags(gguf_repo: FakeHub, models_dir: Path) -> None:
    with pytest.raises(llmrun.HubError, match=f"{REPO} has no Q5_K_S file; available: F32, Q4_K_M, Q8_0$"):
        pull(Reference(REPO, "Q5_K_S"))
    gguf_repo.repos[REPO].files["stories260K-instruct-Q8_0.gguf"] = gguf_repo.repos[REPO].files["stories260K-Q8_0.gguf"]
    with pytest.raises(llmrun.HubError, match=r"the quantization Q8_0 matches 2 files \(stories260K-Q8_0.gguf, "
                                              r"stories260K-instruct-Q8_0.gguf\); choose one as "
                                              r"test/stories260K-GGUF:FILE.gguf"):
        pull(Reference(REPO, "Q8_0"))
    assert pull(Reference(REPO, file="stories260K-instruct-Q8_0.gguf")).name == "stories260K-instruct-Q8_0.gguf"
    with llmrun.load(f"{REPO}:stories260K-instruct-Q8_0.gguf") as model:  # REPO:FILE, as `llmrun list` shows it
        assert model.info.path.endswith("stories260K-instruct-Q8_0.gguf")
    with pytest.raises(llmrun.HubError, match="README.md is not a GGUF model file"):
        pull(Reference(REPO, file="README.md"))
    assert not gguf_repo.downloads("stories260K-Q8_0.gguf")  # nothing downloaded for the failed ones


def test_pull_split_model(hub: FakeHub, models_dir: Path, tmp_path: Path) -> None:
    """A split model: every part downloaded, and the model loaded from the first generates what the one
    file does."""
    whole = models_dir / "stories260K-f32.gguf"
    (tmp_path / "parts").mkdir()
    parts = split_gguf(whole, tmp_path / "parts", 3, stem="stories260K-F32")
    hub.add("test/split", {f"F32/{p.name}": p for p in parts} | {"stories260K-Q8_0.gguf": models_dir /
                                                                  "stories260K-q8_0.gguf"})
    path = pull(Reference("test/split", "f32"))
    assert path.name == "stories260K-F32-00001-of-00003.gguf"
    assert sorted(p.name for p in path.parent.iterdir()) == [p.name for p in parts]
    with llmrun.load(path) as split, llmrun.load(whole) as one:
        np.testing.assert_array_equal(split.logits(PROMPT), one.logits(PROMPT))
        assert split.generate("Once upon a time", max_tokens=80, temperature=0) == \
            one.generate("Once upon a time", max_tokens=80, temperature=0)


def test_pull_safetensors_folder(hub: FakeHub) -> None:
    """A Hugging Face model repository: config, generation config, tokenizer and weights, nothing else."""
    hub.add("test/llama-tied", {p.name: p for p in HF_FOLDER.iterdir()} | {"README.md": b"# card\n",
                                                                         "onnx/model.onnx": b"onnx"})
    with pytest.raises(llmrun.HubError, match="a Hugging Face model .* without quantized files"):
        pull(Reference("test/llama-tied", "Q8_0"))
    folder = pull(Reference("test/llama-tied"))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                         "tokenizer.json", "tokenizer_config.json"]
    with llmrun.load(folder) as hubbed, llmrun.load(HF_FOLDER) as local:
        ids = hubbed.tokenize("Hello world")
        np.testing.assert_array_equal(hubbed.logits(ids), local.logits(ids))


# --- faults -----------------------------------------------------------------------------------------------

def test_interrupted_download_resumes(gguf_repo: FakeHub, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection drops halfway: huggingface_hub asks for the rest (Range) and the file is whole. (It
    writes what it receives in chunks of DOWNLOAD_CHUNK_SIZE, 10 MB, and resumes after the last whole one:
    smaller chunks here, so that a 344 KB file has some.)"""
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1 << 14)
    gguf_repo.interrupt.add(f"{REPO}/stories260K-Q8_0.gguf")
    path = pull(Reference(REPO, "Q8_0"))
    size = (models_dir / "stories260K-q8_0.gguf").stat().st_size
    first, again = gguf_repo.downloads("stories260K-Q8_0.gguf")
    assert first.range is None and again.range.startswith("bytes=")
    assert 0 < int(again.range[len("bytes="):-1]) <= size // 2  # from where the transfer broke, not from 0
    assert path.read_bytes() == (models_dir / "stories260K-q8_0.gguf").read_bytes()


def test_corrupt_download_is_removed(gguf_repo: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte changed in transit: the sha256 differs from the Hub's, the file leaves the cache, the pull
    fails; the next pull gets it whole."""
    gguf_repo.corrupt.add(f"{REPO}/stories260K-Q8_0.gguf")
    with pytest.raises(llmrun.HubError, match=r"stories260K-Q8_0.gguf arrived corrupt \(sha256 [0-9a-f]{64}, the Hub "
                                              r"lists [0-9a-f]{64}\); it was removed from the cache: pull again"):
        pull(Reference(REPO, "Q8_0"))
    assert find_cached(Reference(REPO, "Q8_0")) is None
    blobs = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--test--stories260K-GGUF" / "blobs"
    assert list(blobs.iterdir()) == []
    offline(monkeypatch)
    with pytest.raises(llmrun.HubError, match="not in the Hugging Face cache"):
        llmrun.load(f"{REPO}:Q8_0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert pull(Reference(REPO, "Q8_0")).is_file()


def test_corrupt_small_file_is_removed(hub: FakeHub) -> None:
    """Files outside LFS are checked by their git object id."""
    hub.add("test/llama-tied", {p.name: p for p in HF_FOLDER.iterdir()})
    hub.corrupt.add("test/llama-tied/config.json")
    with pytest.raises(llmrun.HubError, match=r"config.json arrived corrupt \(git blob id"):
        pull(Reference("test/llama-tied"))
    assert find_cached(Reference("test/llama-tied")) is None


def test_short_download_is_not_kept(gguf_repo: FakeHub) -> None:
    """Fewer bytes than the Hub announced: huggingface_hub refuses the file (size check), nothing is cached."""
    gguf_repo.truncate.add(f"{REPO}/stories260K-Q8_0.gguf")
    with pytest.raises(llmrun.HubError, match="downloading stories260K-Q8_0.gguf failed .*Consistency check failed"):
        pull(Reference(REPO, "Q8_0"))
    assert find_cached(Reference(REPO, "Q8_0")) is None


def test_gated_repo_needs_a_token(hub: FakeHub, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add("meta/gated-GGUF", {"m-Q8_0.gguf": models_dir / "stories260K-q8_0.gguf"}, gated=True)
    with pytest.raises(llmrun.HubError, match="meta/gated-GGUF is a gated model: accept its licence on "
                                              "http://127.0.0.1:[0-9]+/meta/gated-GGUF .* set HF_TOKEN"):
        pull(Reference("meta/gated-GGUF"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert pull(Reference("meta/gated-GGUF")).is_file()
    head = [r for r in hub.requests if r.method == "HEAD" and r.path.endswith("m-Q8_0.gguf")][-1]
    assert head.authorization == f"Bearer {TOKEN}"  # to the Hub, and not on to the CDN:
    assert hub.downloads("m-Q8_0.gguf")[-1].authorization is None


def test_unknown_repo_and_no_model(hub: FakeHub) -> None:
    with pytest.raises(llmrun.HubError, match="no model repository nobody/nothing on http://127.0.0.1"):
        pull(Reference("nobody/nothing"))
    hub.add("test/docs", {"README.md": b"hi", "notes.txt": b"x"})
    with pytest.raises(llmrun.HubError, match="neither GGUF model files nor a Hugging Face model .* README.md, "
                                              "notes.txt"):
        pull(Reference("test/docs"))


def test_hub_unreachable(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: closed
    with pytest.raises(llmrun.HubError, match="cannot reach http://127.0.0.1:9 .* run without the network"):
        pull(Reference(REPO))


# --- Hub references as MODEL ------------------------------------------------------------------------------

def test_load_downloads_once_then_uses_the_cache(gguf_repo: FakeHub, models_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with llmrun.load(f"hf.co/{REPO}:Q8_0") as model:
        assert model.info.path.endswith("stories260K-Q8_0.gguf")
        first = model.generate("Once upon a time", max_tokens=20, temperature=0)
    seen = len(gguf_repo.requests)
    with llmrun.load(f"{REPO}:Q8_0") as model:  # cached: no request at all
        assert model.generate("Once upon a time", max_tokens=20, temperature=0) == first
    assert len(gguf_repo.requests) == seen
    offline(monkeypatch)
    with llmrun.load(f"{REPO}:q8_0") as model:
        assert model.generate("Once upon a time", max_tokens=20, temperature=0) == first
    with pytest.raises(llmrun.HubError, match=f"{REPO}:Q4_K_M is not in the Hugging Face cache .* HF_HUB_OFFLINE "
                                              f"is set: run `llmrun pull {REPO}:Q4_K_M` with network access first"):
        llmrun.load(f"{REPO}:Q4_K_M")
    assert len(gguf_repo.requests) == seen


def test_local_path_wins(gguf_repo: FakeHub, models_dir: Path, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that exists is used even where its name could be a repository."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test").mkdir()
    shutil.copy(models_dir / "stories260K-f32.gguf", tmp_path / REPO)
    with llmrun.load(REPO) as model:
        assert model.info.path == REPO and model.info.dtype == "f32"
    assert gguf_repo.requests == []


def test_cli_pull_list_rm(gguf_repo: FakeHub, models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = in_process(capsys, "list")
    assert r.returncode == 0 and "no models in the Hugging Face cache" in r.stderr
    r = in_process(capsys, "pull", f"hf.co/{REPO}:Q8_0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("stories260K-Q8_0.gguf") and Path(r.stdout.strip()).is_file()
    assert in_process(capsys, "pull", REPO).returncode == 0  # Q4_K_M
    hub_folder = {p.name: p for p in HF_FOLDER.iterdir()}
    gguf_repo.add("test/llama-tied", hub_folder)
    assert in_process(capsys, "pull", "test/llama-tied").returncode == 0

    r = in_process(capsys, "list")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["REFERENCE", "FILE", "QUANT", "ARCHITECTURE", "PARAMETERS", "SIZE", "LAST", "USED"]
    q8 = models_dir / "stories260K-q8_0.gguf"
    with llmrun.load(q8) as model:
        params = model.info.n_params
    by_ref = {row.split()[0]: row.split() for row in rows}
    assert set(by_ref) == {f"{REPO}:Q4_K_M", f"{REPO}:Q8_0", "test/llama-tied"}
    assert by_ref[f"{REPO}:Q8_0"][1:5] == ["stories260K-Q8_0.gguf", "Q8_0", "llama", f"{params / 1000:.1f}K"]
    assert by_ref[f"{REPO}:Q8_0"][5] == f"{q8.stat().st_size / 1000:.1f}KB"
    assert by_ref["test/llama-tied"][1:7] == ["folder", "of", "5", "files", "-", "LlamaForCausalLM"]

    r = in_process(capsys, "rm", f"{REPO}:q8_0")
    assert r.returncode == 0 and r.stdout == f"removed {REPO}:q8_0 from the cache: 1 files, " \
                                              f"{q8.stat().st_size / 1000:.1f}KB freed\n"
    assert {m.reference for m in cached_models()} == {Reference(REPO, "Q4_K_M"), Reference("test/llama-tied")}
    one_line_error(in_process(capsys, "rm", f"{REPO}:Q8_0"), f"{REPO}:Q8_0 is not in the cache; cached from {REPO}: "
                                                            f"{REPO}:Q4_K_M")
    r = in_process(capsys, "rm", "test/llama-tied")
    assert r.returncode == 0 and "5 files" in r.stdout
    assert [m.reference for m in cached_models()] == [Reference(REPO, "Q4_K_M")]
    assert not (Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--test--llama-tied").exists()
    one_line_error(in_process(capsys, "rm", "test/llama-tied"), "test/llama-tied is not in the Hugging Face cache")


def test_cli_errors_are_one_line(gguf_repo: FakeHub, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    one_line_error(in_process(capsys, "pull", f"{REPO}:Q5_K_S"), "has no Q5_K_S file; available: F32, Q4_K_M, Q8_0")
    one_line_error(in_process(capsys, "pull", "not-a-repo"), "'not-a-repo' is not a Hub reference")
    offline(monkeypatch)
    one_line_error(in_process(capsys, "generate", f"{REPO}:Q8_0", "-n", "5"), "HF_HUB_OFFLINE is set")


def test_cli_downloads_a_missing_model(gguf_repo: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    r = in_process(capsys, "generate", f"{REPO}:Q8_0", "-p", "Once upon a time", "-n", "8", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert f"llmrun: {REPO}:Q8_0 is not in the cache" in r.stderr and "downloading it from http://127.0.0.1" in r.stderr
    assert r.stdout.startswith("Once upon a time, there was")


def test_cli_uses_the_environment(gguf_repo: FakeHub, tmp_path: Path) -> None:
    """HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE as a user sets them, in fresh processes."""
    env = {**os.environ, "HF_ENDPOINT": huggingface_hub.constants.ENDPOINT, "HF_HUB_CACHE": str(tmp_path / "env-cache"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    run = lambda *args, **extra: subprocess.run([*LLMRUN, *args], capture_output=True, text=True, timeout=60,  # noqa: E731
                                                env={**env, **extra})
    r = run("pull", f"{REPO}:Q8_0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(str(tmp_path / "env-cache" / "models--test--stories260K-GGUF" / "snapshots"))
    r = run("generate", f"{REPO}:Q8_0", "-p", "Once upon a time", "-n", "8", "--temperature", "0", HF_HUB_OFFLINE="1",
            HF_ENDPOINT="http://127.0.0.1:9")
    assert r.returncode == 0 and r.stdout.startswith("Once upon a time, there was"), r.stderr
    r = run("generate", f"{REPO}:F32", "-n", "8", HF_HUB_OFFLINE="1")
    assert r.returncode == 1 and "HF_HUB_OFFLINE is set" in r.stderr


def test_import_does_not_import_huggingface_hub(tmp_path: Path) -> None:
    """`import llmrun`, the demo and local files stay as fast as before: huggingface_hub is imported when the
    Hub or its cache is needed, not earlier. (In a fresh process, outside the source folder: CI imports the
    installed package.)"""
    code = "import sys, llmrun; llmrun.load('demo').close(); assert 'huggingface_hub' not in sys.modules, 'imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_without_huggingface_hub(tmp_path: Path) -> None:
    """Installed without its dependencies (`pip install --no-deps`): the demo and local files run, and a Hub
    reference says what to install."""
    code = ("import sys; sys.modules['huggingface_hub'] = None; import llmrun; llmrun.load('demo').close()\n"
            "try: llmrun.load('owner/repo:Q8_0')\n"
            "except llmrun.HubError as e: print(e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and "need the huggingface_hub package" in r.stdout and \
        r.stdout.rstrip().endswith("pip install huggingface_hub"), r.stdout + r.stderr


# --- the review's findings --------------------------------------------------------------------------------

def test_a_half_pulled_folder_is_not_a_cached_model(hub: FakeHub) -> None:
    """A pull stopped after some of a folder's files (config first, tokenizer and weights later) leaves a
    snapshot that is not a model: the next use downloads the rest instead of failing on missing tensors."""
    hub.add("test/llama-tied", {p.name: p for p in HF_FOLDER.iterdir()})
    folder = pull(Reference("test/llama-tied"))
    (folder / "tokenizer.json").unlink()
    assert find_cached(Reference("test/llama-tied")) is None
    assert llmrun.hub.find_model("test/llama-tied") == folder and (folder / "tokenizer.json").is_file()
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    hub.add("test/sharded", {"config.json": HF_FOLDER / "config.json", "tokenizer.json": HF_FOLDER / "tokenizer.json",
                             "model-00001-of-00002.safetensors": HF_FOLDER / "model.safetensors",
                             "model-00002-of-00002.safetensors": HF_FOLDER / "model.safetensors",
                             "model.safetensors.index.json": json.dumps(index).encode()})
    folder = pull(Reference("test/sharded"))
    assert find_cached(Reference("test/sharded")) == folder
    (folder / "model-00002-of-00002.safetensors").unlink()
    assert find_cached(Reference("test/sharded")) is None


def test_an_ambiguous_tag_is_never_taken_for_absent_or_removed_whole(hub: FakeHub, models_dir: Path,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    q8 = models_dir / "stories260K-q8_0.gguf"
    hub.add(REPO, {"base-Q8_0.gguf": q8, "instruct-Q8_0.gguf": q8})
    for name in ("base-Q8_0.gguf", "instruct-Q8_0.gguf"):
        pull(Reference(REPO, file=name))
    one_line_error(in_process(capsys, "rm", f"{REPO}:Q8_0"), "matches 2 cached models")
    assert len(cached_models()) == 2  # nothing removed
    offline(monkeypatch)
    with pytest.raises(llmrun.HubError, match="matches 2 files"):
        llmrun.hub.find_model(f"{REPO}:Q8_0")
    assert pull(Reference(REPO, file="base-Q8_0.gguf")).name == "base-Q8_0.gguf"  # offline: the cached copy


def test_names_that_are_paths_stay_paths(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """models/x beside a models/ folder, and names the Hub refuses as repository ids ("--", ".."), are
    mistyped paths: "no such model file", not a Hub error."""
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in ("models/x", "ckpt/run..2", "a/b--c"):
        assert llmrun.hub.find_model(name) == Path(name)
        with pytest.raises(llmrun.ModelFormatError, match="no such model file"):
            llmrun.load(name)
    assert parse_reference("a/b..c") is None and parse_reference("owner/repo") is not None


def test_quantize_takes_the_demo_and_double_dash_ends_options(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    r = in_process(capsys, "quantize", "demo", str(tmp_path / "d.gguf"), "--type", "q8_0")
    assert r.returncode == 0, r.stderr
    one_line_error(in_process(capsys, "generate", "-p", "x", "-n", "2", "--", "-odd-name.gguf"),
                   "-odd-name.gguf: no such model file")
