"""The six recipes: end-to-end runs through ``accelerate launch`` (a few steps each) on their
offline defaults and on a user's local files, and their answers to bad input."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _paths import REPO, recipe_exit_status
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from clion_hf.workloads.corpus import CORPUS_SHA256
from clion_hf.workloads.models import offline_pretrained_checkpoint

CONFIGS = REPO / "recipes" / "accelerate_configs"
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
LM_KEYS = {"eval_loss", "perplexity", "train_loss", "train_runtime"}
CLS_KEYS = {"eval_loss", "eval_accuracy", "train_loss", "train_runtime"}
EXPECTED = {
    "gpt2_pretrain": LM_KEYS,
    "gpt2_finetune": LM_KEYS,
    "bert_pretrain": LM_KEYS,
    "bert_finetune": CLS_KEYS | {"eval_f1"},  # the offline task is a sentence pair task
    "vit_pretrain": CLS_KEYS,
    "vit_finetune": CLS_KEYS,
}
# the embedded dataset each recipe's offline default loads
OFFLINE_SOURCE = {
    "gpt2_pretrain": "pydoc-topics",
    "gpt2_finetune": "pydoc-topics",
    "bert_pretrain": "pydoc-topics",
    "bert_finetune": "pydoc-paraphrase",
    "vit_pretrain": "sklearn-digits",
    "vit_finetune": "sklearn-digits",
}



@pytest.fixture(scope="module")
def env(offline_env) -> dict[str, str]:
    return offline_env


def launch(env, recipe: str, out: Path, *args: str, config: str = "cpu.yaml"):
    cmd = [ACCELERATE, "launch", "--config_file", str(CONFIGS / config),
           str(REPO / "recipes" / f"{recipe}.py"), "--output_dir", str(out),
           "--optim", "adamw_torch", "--max_steps", "3", "--max_eval_samples", "32",
           "--max_test_samples", "32",
           *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # the recipe says where its results are
    assert f"{recipe}.py: results written to {out.resolve()}/ (all_results.json" in proc.stdout
    return json.loads((out / "all_results.json").read_text())


def checkpoint(env, family: str) -> str:
    """The offline checkpoint the finetune recipes would build, built here (in-process)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "CLION_HF_CACHE",
                     "CLION_HF_CHECKPOINT_MAX_STEPS"):  # fmt: skip
            mp.setenv(name, env[name])
        return offline_pretrained_checkpoint(family)


@pytest.mark.slow
def test_offline_checkpoint_is_built_in_this_process_and_leaves_its_caller_alone(
    env, monkeypatch
):
    """The finetune recipes and clion-bench call a function that trains the checkpoint in
    their own process: no recipe subprocess, and the caller's random state, thread count
    and record of the data it loaded are as they were."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clion_hf.workloads.data import data_used
    from clion_hf.workloads.models import MANIFEST

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "CLION_HF_CACHE"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("CLION_HF_CHECKPOINT_MAX_STEPS", "3")  # a key of its own: built now

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"a subprocess was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    threads, loaded = torch.get_num_threads(), data_used()
    path = Path(offline_pretrained_checkpoint("gpt2"))
    assert torch.equal(torch.rand(4), expected)
    assert torch.get_num_threads() == threads and data_used() == loaded
    assert path.name.startswith("gpt2-pretrain-") and (path / MANIFEST).is_file()
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert model.config.n_embd == 64 and model.config.vocab_size == len(tok)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(EXPECTED))
def test_offline_default(env, tmp_path, recipe):
    results = launch(env, recipe, tmp_path)
    assert EXPECTED[recipe] <= set(results), results
    # the offline defaults have a held-out test split, reported as test_* metrics
    held_out = {k.replace("eval_", "test_") for k in EXPECTED[recipe] if k.startswith("eval_")}
    held_out |= {"test_perplexity"} if "perplexity" in EXPECTED[recipe] else set()
    assert held_out <= set(results), results
    # the results name the data: the shipped corpus (text) or scikit-learn's digits (ViT)
    source = OFFLINE_SOURCE[recipe]
    assert results["data_source"] == source, results
    if source != "sklearn-digits":
        assert results["data_sha256"] == CORPUS_SHA256
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    assert history[-1]["step"] == 3
    assert all("elapsed_s" in e and "peak_mem_mb" in e for e in history)
    assert sum("optimizer_state_mb" in e for e in history) == 1
    assert sum("eval_loss" in e for e in history) >= 2  # periodic evaluation + final one
    assert (tmp_path / "model.safetensors").is_file()


@pytest.mark.slow
def test_gpt2_finetune_on_wikitext_like_text_files(env, tmp_path):
    text = "\n".join(f" = Section {i} = \n The value of item {i} is {i * 7} ." for i in range(300))
    (tmp_path / "train.txt").write_text(text)
    (tmp_path / "valid.txt").write_text(text[: len(text) // 4])
    results = launch(
        env, "gpt2_finetune", tmp_path / "out",
        "--model_name_or_path", checkpoint(env, "gpt2"),
        "--train_file", str(tmp_path / "train.txt"),
        "--validation_file", str(tmp_path / "valid.txt"), "--block_size", "32",
        "--max_eval_samples", "100000",  # every validation block, for the recomputation
    )  # fmt: skip
    assert LM_KEYS <= set(results)
    given = (tmp_path / "train.txt").read_bytes() + (tmp_path / "valid.txt").read_bytes()
    assert results["data_source"] == "files"
    assert results["data_sha256"] == hashlib.sha256(given).hexdigest()  # the data used
    # eval_loss recomputed from the saved model and the validation file, without Trainer or
    # datasets: run_clm's grouping of the line-by-line token ids, mean NLL per predicted token
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    lines = (tmp_path / "valid.txt").read_text().split("\n")
    ids = [t for line in lines for t in tok(line)["input_ids"]]
    blocks = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)
    with torch.no_grad():
        logits = model(input_ids=blocks).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1))
    assert results["eval_loss"] == pytest.approx(nll.item(), rel=1e-4)


@pytest.mark.slow
def test_bert_pretrain_from_saved_text_dataset(env, tmp_path):
    rows = [f"The number {i} is followed by {i + 1} in the list." for i in range(400)]
    DatasetDict(train=Dataset.from_dict({"text": rows})).save_to_disk(tmp_path / "wikitext")
    results = launch(
        env, "bert_pretrain", tmp_path / "out", "--dataset_name", str(tmp_path / "wikitext"),
        "--config_name", "tiny-bert", "--max_seq_length", "32",
    )  # fmt: skip
    assert LM_KEYS <= set(results)
    # the saved dataset was the data used (no hash: a saved dataset is not one file)
    assert results["data_source"] == str(tmp_path / "wikitext") and results["data_sha256"] is None
    # ... and the tokenizer was trained on it: its vocabulary has the rows' words
    vocab = json.loads((tmp_path / "out" / "tokenizer.json").read_text())["model"]["vocab"]
    assert {"number", "followed", "list"} <= set(vocab)


@pytest.mark.slow
def test_bert_finetune_on_sst2_like_csv(env, tmp_path):
    lines = ["sentence,label,idx"] + [
        f"{'a good film' if i % 2 else 'a bad film'} number {i},{i % 2},{i}" for i in range(64)
    ]
    (tmp_path / "sst2.csv").write_text("\n".join(lines) + "\n")
    results = launch(
        env, "bert_finetune", tmp_path / "out", "--model_name_or_path", checkpoint(env, "bert"),
        "--train_file", str(tmp_path / "sst2.csv"), "--validation_file", str(tmp_path / "sst2.csv"),
    )  # fmt: skip
    assert CLS_KEYS <= set(results) and "eval_f1" not in results  # single-sentence task
    # the csv was the data used, as training and as validation set
    given = (tmp_path / "sst2.csv").read_bytes()
    assert results["data_source"] == "files"
    assert results["data_sha256"] == hashlib.sha256(given + given).hexdigest()
    assert results["train_samples"] == 64
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"}


@pytest.mark.slow
def test_vit_on_cifar100_like_saved_dataset_and_imagefolder(env, tmp_path):
    n = 24
    features = Features({
        "img": Image(), "fine_label": ClassLabel(names=["apple", "bee", "cup"]),
        "coarse_label": ClassLabel(names=["x", "y"]),
    })  # fmt: skip
    images = [PILImage.new("RGB", (32, 32), (80 * (i % 3), 0, 0)) for i in range(n)]
    ds = Dataset.from_dict(
        {"img": images, "fine_label": [i % 3 for i in range(n)], "coarse_label": [0] * n},
        features=features,
    )
    DatasetDict(train=ds, test=ds).save_to_disk(tmp_path / "cifar100")
    results = launch(
        env, "vit_finetune", tmp_path / "ft", "--model_name_or_path", checkpoint(env, "vit"),
        "--dataset_name", str(tmp_path / "cifar100"),
    )  # fmt: skip
    assert CLS_KEYS <= set(results)
    assert results["data_source"] == str(tmp_path / "cifar100")
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["id2label"] == {"0": "apple", "1": "bee", "2": "cup"}  # its classes
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / "folder" / split / cls).mkdir(parents=True)
            for i in range(4):
                PILImage.new("RGB", (32, 32)).save(tmp_path / "folder" / split / cls / f"{i}.png")
    results = launch(
        env, "vit_pretrain", tmp_path / "pt", "--train_dir", str(tmp_path / "folder" / "train"),
        "--validation_dir", str(tmp_path / "folder" / "val"),
    )  # fmt: skip
    assert CLS_KEYS <= set(results)
    # the image folders were the data used: their classes, their 8 training images
    assert results["data_source"] == "imagefolder" and results["train_samples"] == 8
    config = json.loads((tmp_path / "pt" / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog"}


@pytest.mark.slow
def test_two_process_cpu_ddp(env, tmp_path):
    results = launch(env, "gpt2_pretrain", tmp_path, config="cpu_ddp_2proc.yaml")
    assert LM_KEYS <= set(results)
    # 3 steps of 16 blocks on each of 2 processes: twice the data of a 1-process run
    assert results["epoch"] == pytest.approx(3 * 16 * 2 / results["train_samples"], rel=0.05)


# What the recipes say to bad input: one line naming the bad value, exit status 2. Checked
# in-process through the recipe's own main() and run() (parsing, then loading the data, the
# tokenizer and the config, where each error is found), and once as a real process.
BAD_INPUT = [
    (["--train_file", "/no/x.csv"], "--train_file '/no/x.csv' does not exist"),
    (["--dataset_name", "nosuch"], "unknown dataset 'nosuch' in offline mode"),
    (["--config_name", "huge-gpt2"], "unknown config 'huge-gpt2' in offline mode"),
    # a ZeroDivisionError in the scheduler, a silent default, a traceback from datasets
    (["--max_steps", "0"], "--max_steps 0 must be >= 1"),
    (["--block_size", "0"], "--block_size 0 must be >= 1"),
    (["--train_file", "EMPTY"], "is empty"),
    (["--model_name_or_path", "/no/model"], "'/no/model' does not exist"),
]  # fmt: skip


def _bad_args(tmp_path: Path, args: list[str]) -> tuple[str, list[str]]:
    """The recipe a bad-input case runs and its arguments (``EMPTY``: an empty file)."""
    (tmp_path / "empty.txt").write_text("")
    args = [str(tmp_path / "empty.txt") if a == "EMPTY" else a for a in args]
    recipe = "gpt2_finetune" if "--model_name_or_path" in args else "gpt2_pretrain"
    return recipe, ["--output_dir", str(tmp_path / "out"), *args]


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_bad_input_is_one_line_and_status_2(
    env, tmp_path, monkeypatch, capsys, args, message
):
    recipe, argv = _bad_args(tmp_path, args)
    path = REPO / "recipes" / f"{recipe}.py"
    assert recipe_exit_status(recipe, argv, env, monkeypatch) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars
    assert last.startswith(f"{path}: error: ") and message in last, last
    assert not (tmp_path / "out").exists()  # stopped before anything was written


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line_and_no_traceback(env, tmp_path):
    recipe, argv = _bad_args(tmp_path, BAD_INPUT[0][0])
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / f"{recipe}.py"), *argv],
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert BAD_INPUT[0][1] in last and "error:" in last and "Traceback" not in proc.stderr
