"""Fast tests of clion_hf's data, tokenizers, metrics and callbacks (no training runs)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from clion_hf.workloads import data
from clion_hf.workloads.data import RecipeError
from clion_hf.workloads.run_stats import RunStatsCallback

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLION_HF_CACHE", str(tmp_path / "clion_cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def data_args(**kw) -> SimpleNamespace:
    base = dict(
        dataset_name=None, dataset_config_name=None, train_file=None, validation_file=None,
        test_file=None, train_dir=None, validation_dir=None, max_train_samples=None,
        max_eval_samples=None,
        validation_split_percentage=5,
    )  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


# --- embedded datasets ------------------------------------------------------------------


def test_pydoc_split_is_disjoint_complete_and_deterministic():
    split = data.pydoc_split()
    assert set(split) == {"pretrain", "finetune", "validation", "test"}
    names = [set(v) for v in split.values()]
    assert all(names), split
    assert sum(len(n) for n in names) == len(set().union(*names))  # pairwise disjoint
    assert set().union(*names) == set(data.pydoc_documents())
    assert data.pydoc_split() == split
    docs = data.pydoc_documents()
    total = sum(len(t) for t in docs.values())
    assert sum(len(docs[n]) for n in split["validation"]) >= 0.10 * total
    assert sum(len(docs[n]) for n in split["test"]) >= 0.10 * total


def test_offline_text_has_wikitext_schema_and_held_out_validation():
    pre, fine = data.offline_text_dataset("pretrain"), data.offline_text_dataset("finetune")
    for ds in (pre, fine):
        assert ds["train"].features == Features({"text": Value("string")})
        assert len(ds["train"]) > 100 and len(ds["validation"]) > 100
    assert pre["validation"]["text"] == fine["validation"]["text"]
    assert pre["test"]["text"] == fine["test"]["text"] and len(pre["test"]) > 100
    # held-out text shares no paragraph with any training text (pydoc topics quote each other)
    for held in ("validation", "test"):
        assert not set(pre[held]["text"]) & (set(pre["train"]["text"]) | set(fine["train"]["text"]))
    assert pre["train"]["text"] == data.offline_text_dataset("pretrain")["train"]["text"]
    # every training paragraph of one part comes from that part's documents only
    docs, split = data.pydoc_documents(), data.pydoc_split()
    fine_text = "".join(docs[n] for n in split["finetune"])
    assert all(p.strip("\n") in fine_text for p in fine["train"]["text"][:50])
    with pytest.raises(RecipeError, match="bogus"):
        data.offline_text_dataset("bogus")


def test_offline_pairs_have_mrpc_schema_and_balanced_labels():
    ds = data.offline_pair_dataset()
    features = ds["train"].features
    assert list(features) == ["sentence1", "sentence2", "label", "idx"]
    assert features["sentence1"] == Value("string") and features["idx"] == Value("int32")
    assert features["label"] == ClassLabel(names=["not_equivalent", "equivalent"])
    for split in ("train", "validation", "test"):
        labels = ds[split]["label"]
        assert sum(labels) * 2 == len(labels)
    row = ds["train"][0]
    assert row["label"] == 1 and set(row["sentence2"].split()) <= set(row["sentence1"].split())
    # validation pairs come from held-out documents only
    assert not set(ds["train"]["sentence1"]) & set(ds["validation"]["sentence1"])
    assert not set(ds["train"]["sentence1"]) & set(ds["test"]["sentence1"])
    assert ds["train"]["sentence2"] == data.offline_pair_dataset()["train"]["sentence2"]


def test_offline_images_have_cifar_schema_and_split_by_class():
    pre, fine = data.offline_image_dataset("pretrain"), data.offline_image_dataset("finetune")
    assert pre["train"].features == Features(
        {"img": Image(), "label": ClassLabel(names=["0", "1", "2", "3", "4"])}
    )
    assert fine["train"].features["label"].names == ["5", "6", "7", "8", "9"]
    img = pre["train"][0]["img"]
    assert img.mode == "RGB" and img.size == (16, 16)
    n_pre = sum(len(pre[s]) for s in ("train", "validation", "test"))
    n_fine = sum(len(fine[s]) for s in ("train", "validation", "test"))
    assert abs(len(pre["test"]) - len(pre["validation"])) <= 5
    assert 850 < n_pre < 950 and 850 < n_fine < 950  # 1797 digits, about 180 per class
    assert sorted(set(fine["validation"]["label"])) == [0, 1, 2, 3, 4]
    assert pre["validation"]["label"] == data.offline_image_dataset("pretrain")["validation"][
        "label"
    ]


# --- tokenizers ---------------------------------------------------------------------------


def test_tokenizers_train_save_and_reload(tmp_path):
    from transformers import AutoTokenizer

    texts = data.offline_text_dataset("pretrain")["train"]["text"]
    gpt2 = data.train_tokenizer("gpt2", texts, vocab_size=300)
    assert len(gpt2) == 300 and gpt2.eos_token == "<|endoftext|>"
    ids = gpt2("The if statement")["input_ids"]
    assert gpt2.decode(ids) == "The if statement"
    bert = data.train_tokenizer("bert", texts, vocab_size=300)
    enc = bert("The if statement", "is used")
    assert enc["input_ids"][0] == bert.cls_token_id and enc["input_ids"][-1] == bert.sep_token_id
    assert set(enc["token_type_ids"]) == {0, 1}
    bert.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again("The if statement", "is used")["input_ids"] == enc["input_ids"]
    assert again.mask_token == "[MASK]"
    # cached: a second call loads the same files instead of retraining
    cached = list((Path(os.environ["CLION_HF_CACHE"]) / "tokenizers").iterdir())
    assert len(cached) == 2
    data.train_tokenizer("bert", texts, vocab_size=300)
    assert len(list(cached[0].parent.iterdir())) == 2
    with pytest.raises(RecipeError, match="sentencepiece"):
        data.train_tokenizer("sentencepiece", texts)


# --- local files and saved datasets with Hub schemas --------------------------------------


def test_local_text_files_wikitext_schema(tmp_path):
    (tmp_path / "train.txt").write_text("= Title =\nsome text here\nmore text\n")
    (tmp_path / "val.txt").write_text("other text\n")
    raw, column = data.load_text_datasets(
        data_args(
            train_file=str(tmp_path / "train.txt"),
            validation_file=str(tmp_path / "val.txt"),
        ),
        part="pretrain",
    )
    assert column == "text" and raw["train"]["text"][1] == "some text here"
    rows = [{"text": f"line {i}"} for i in range(40)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    raw, column = data.load_text_datasets(
        data_args(train_file=str(tmp_path / "train.jsonl")), part="finetune"
    )
    assert len(raw["train"]) == 38 and len(raw["validation"]) == 2  # 5% held out


def test_local_glue_csv_pair_and_single(tmp_path):
    mrpc = tmp_path / "mrpc.csv"
    mrpc.write_text("sentence1,sentence2,label,idx\na b,a,1,0\nc d,e f,0,1\ng h,g,1,2\n")
    raw, keys, names = data.load_classification_datasets(
        data_args(train_file=str(mrpc), validation_file=str(mrpc))
    )
    assert keys == ("sentence1", "sentence2") and names == ["0", "1"]
    assert isinstance(raw["train"].features["label"], ClassLabel)
    sst2 = tmp_path / "sst2.json"
    sst2.write_text(
        "\n".join(json.dumps({"sentence": s, "label": lab, "idx": i})
                  for i, (s, lab) in enumerate([("good", 1), ("bad", 0)]))  # fmt: skip
    )
    raw, keys, names = data.load_classification_datasets(
        data_args(train_file=str(sst2), validation_file=str(sst2))
    )
    assert keys == ("sentence", None) and names == ["0", "1"]
    assert "test" not in raw
    # a labelled --test_file is kept for held-out reporting; GLUE-style hidden labels (-1) not
    hidden = tmp_path / "hidden.json"
    hidden.write_text(json.dumps({"sentence": "meh", "label": -1, "idx": 0}))
    for test_file, kept in ((sst2, True), (hidden, False)):
        raw, _, _ = data.load_classification_datasets(
            data_args(train_file=str(sst2), validation_file=str(sst2), test_file=str(test_file))
        )
        assert ("test" in raw) == kept


def _cifar_like(n: int, label: str) -> Dataset:
    imgs = [PILImage.new("RGB", (32, 32), (i * 20 % 255, 0, 0)) for i in range(n)]
    features = {"img": Image(), label: ClassLabel(names=[f"c{i}" for i in range(3)])}
    if label == "fine_label":
        features["coarse_label"] = ClassLabel(names=["x", "y"])
    cols = {"img": imgs, label: [i % 3 for i in range(n)]}
    if label == "fine_label":
        cols["coarse_label"] = [i % 2 for i in range(n)]
    return Dataset.from_dict(cols, features=Features(features))


def test_saved_cifar100_like_dataset_and_imagefolder(tmp_path):
    DatasetDict(train=_cifar_like(9, "fine_label"), test=_cifar_like(3, "fine_label")).save_to_disk(
        tmp_path / "cifar100"
    )
    raw, image_col, label_col, names = data.load_image_datasets(
        data_args(dataset_name=str(tmp_path / "cifar100"), validation_split_percentage=34),
        part="finetune",
    )
    assert (image_col, label_col, names) == ("img", "fine_label", ["c0", "c1", "c2"])
    assert len(raw["validation"]) == 4  # no validation split: held out from train
    assert len(raw["test"]) == 3  # the labelled test split is kept for held-out reporting
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / "folder" / split / cls).mkdir(parents=True)
            for i in range(2):
                PILImage.new("RGB", (8, 8)).save(tmp_path / "folder" / split / cls / f"{i}.png")
    raw, image_col, label_col, names = data.load_image_datasets(
        data_args(
            train_dir=str(tmp_path / "folder" / "train"),
            validation_dir=str(tmp_path / "folder" / "val"),
        ),
        part="pretrain",
    )
    assert (image_col, label_col, names) == ("image", "label", ["cat", "dog"])
    assert len(raw["train"]) == 4 and len(raw["validation"]) == 4


def test_bad_inputs_name_the_value_and_what_is_allowed(tmp_path, monkeypatch):
    with pytest.raises(RecipeError, match=r"--train_file '.*missing.csv' does not exist"):
        data.load_classification_datasets(data_args(train_file=str(tmp_path / "missing.csv")))
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(RecipeError, match=r"'.parquet'; allowed: .csv"):
        data.load_text_datasets(data_args(train_file=str(tmp_path / "x.parquet")), "pretrain")
    with pytest.raises(RecipeError, match=r"'sklearn-digits' does not fit.*'pydoc-topics'"):
        data.load_text_datasets(data_args(dataset_name="sklearn-digits"), "pretrain")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RecipeError, match=r"unknown dataset 'nosuch/set' in offline mode"):
        data.load_image_datasets(data_args(dataset_name="nosuch/set"), "pretrain")


# --- metrics and callbacks ----------------------------------------------------------------


def test_metrics_load_with_the_network_unreachable(tmp_path):
    code = (
        "import numpy as np\n"
        "from clion_hf.workloads.metrics import classification_metrics, perplexity\n"
        "m = classification_metrics(with_f1=True)\n"
        "logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])\n"
        "print(m((logits, np.array([1, 0, 0, 1]))), perplexity(0.0))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HTTPS_PROXY": "http://127.0.0.1:9",  # any network attempt fails fast
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HF_HOME": str(tmp_path / "hf_home"),  # nothing cached from earlier runs
        "PYTHONPATH": str(REPO),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "{'accuracy': 0.5, 'f1': 0.5} 1.0" in out


def test_run_stats_callback_adds_time_memory_and_optimizer_state():
    param = torch.nn.Parameter(torch.zeros(1000))
    opt = torch.optim.AdamW([param])
    state = SimpleNamespace(log_history=[])
    cb = RunStatsCallback()
    cb.on_train_begin(None, state, None)
    state.log_history.append({"loss": 1.0, "step": 1})
    cb.on_log(None, state, None, logs={"loss": 1.0}, optimizer=opt)
    assert "optimizer_state_mb" not in state.log_history[-1]  # no state before a step
    param.grad = torch.ones(1000)
    opt.step()
    state.log_history.append({"loss": 0.5, "step": 2})
    cb.on_log(None, state, None, logs={"loss": 0.5}, optimizer=opt)
    entry = state.log_history[-1]
    # exp_avg + exp_avg_sq: 2 x 1000 fp32, plus the step counter
    assert entry["optimizer_state_mb"] == pytest.approx(8004 / 2**20, abs=1e-4)
    assert entry["elapsed_s"] >= 0 and entry["peak_mem_mb"] > 10
    state.log_history.append({"eval_loss": 0.4, "step": 2})
    cb.on_log(None, state, None, logs={}, optimizer=opt)
    assert "optimizer_state_mb" not in state.log_history[-1]
    assert "elapsed_s" in state.log_history[-1]
