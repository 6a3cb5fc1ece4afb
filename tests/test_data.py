"""Fast tests of clion_hf's data, tokenizers, metrics and callbacks (no training runs)."""

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _paths import REPO
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from clion_hf.workloads import corpus, data, offline, preprocess, tokenizer
from clion_hf.workloads.errors import RecipeError
from clion_hf.workloads.run_stats import RunStatsCallback


@pytest.fixture(scope="session")
def _shared_cache(tmp_path_factory) -> Path:
    """One cache for the session: the corpus is parsed and saved once, not per test."""
    return tmp_path_factory.mktemp("clion_cache")


@pytest.fixture(autouse=True)
def _isolated_cache(_shared_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CLION_HF_CACHE", str(_shared_cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def data_args(**kw) -> SimpleNamespace:
    base = dict(
        dataset_name=None, dataset_config_name=None, train_file=None, validation_file=None,
        test_file=None, train_dir=None, validation_dir=None, max_train_samples=None,
        max_eval_samples=None, max_test_samples=None,
        validation_split_percentage=5, test_split_percentage=0,
    )  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


# --- embedded datasets ------------------------------------------------------------------


def test_corpus_is_python_docs_split_by_document():
    docs = corpus.offline_documents()
    stdlib = [n for n in docs if n.startswith("stdlib:")]
    assert len([n for n in docs if n.startswith("pydoc:")]) > 70  # help()'s topics
    assert len(stdlib) > 200 and "stdlib:json/__init__.py" in docs
    assert not any("/test" in n or n.startswith("stdlib:test") for n in stdlib)
    assert "JSON" in docs["stdlib:json/__init__.py"]
    total = sum(len(t) for t in docs.values())
    assert total > 1_000_000  # about 4x the pydoc topics alone
    split = corpus.document_split()
    assert set(split) == {"pretrain", "finetune", "validation", "test"}
    names = [set(v) for v in split.values()]
    assert sum(len(n) for n in names) == len(set().union(*names)) == len(docs)  # a partition
    assert corpus.document_split() == split
    for held in ("validation", "test"):
        assert len(split[held]) >= 30  # many documents, not one
        assert sum(len(docs[n]) for n in split[held]) >= 0.10 * total
        # drawn across both sources (the order is a hash of the name, not the source)
        assert {n.split(":")[0] for n in split[held]} == {"pydoc", "stdlib"}


def test_corpus_is_the_shipped_file_on_every_python():
    """The corpus was the running Python's documentation (keyed by sys.version): benchmark
    data changed with the Python version. It is now one shipped file, whatever the Python."""
    import gzip
    import hashlib

    shipped = gzip.decompress(corpus.CORPUS_FILE.read_bytes())
    assert hashlib.sha256(shipped).hexdigest() == corpus.CORPUS_SHA256
    assert corpus.CORPUS_FILE.with_name("LICENSE-Python.txt").is_file()
    rows = [json.loads(line) for line in shipped.decode().splitlines()]
    docs = corpus.offline_documents()
    assert docs == {r["name"]: r["text"] for r in rows} and len(docs) == len(rows)
    docs["pydoc:assert"] = "edited"  # a copy: the next caller still gets the shipped text
    assert corpus.offline_documents() == {r["name"]: r["text"] for r in rows}
    assert corpus.document_split() == corpus.document_split(docs)


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7) or sys.implementation.name != "cpython",
                    reason="the corpus is CPython 3.11.7's documentation")  # fmt: skip
def test_freeze_corpus_script_rebuilds_the_shipped_file():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "freeze_corpus.py"), "--check"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["rebuilt", corpus.CORPUS_SHA256, "shipped",
                                   corpus.CORPUS_SHA256]  # fmt: skip


def test_what_a_recipe_loaded_is_recorded_with_its_hash(tmp_path):
    """Results said nothing of the data used: the corpus changed with the Python version."""
    data.load_text_datasets(data_args(), part="pretrain")
    assert data.data_used() == {"data_source": "pydoc-topics",
                                "data_sha256": corpus.CORPUS_SHA256}  # fmt: skip
    data.load_classification_datasets(data_args())
    assert data.data_used() == {"data_source": "pydoc-paraphrase",
                                "data_sha256": corpus.CORPUS_SHA256}  # fmt: skip
    data.load_image_datasets(data_args(), "finetune")
    used = data.data_used()
    assert used["data_source"] == "sklearn-digits" and len(used["data_sha256"]) == 64
    assert used == (data.load_image_datasets(data_args(), "pretrain"), data.data_used())[1]
    DatasetDict(train=Dataset.from_dict({"text": ["a b"] * 4})).save_to_disk(tmp_path / "saved")
    data.load_text_datasets(data_args(dataset_name=str(tmp_path / "saved")), part="pretrain")
    assert data.data_used() == {"data_source": str(tmp_path / "saved"), "data_sha256": None}


def test_offline_text_has_wikitext_schema_and_held_out_validation():
    pre, fine = offline.offline_text_dataset("pretrain"), offline.offline_text_dataset("finetune")
    for ds in (pre, fine):
        assert ds["train"].features == Features({"text": Value("string")})
        assert len(ds["train"]) > 100 and len(ds["validation"]) > 100
    assert pre["validation"]["text"] == fine["validation"]["text"]
    assert pre["test"]["text"] == fine["test"]["text"] and len(pre["test"]) > 100
    # held-out text shares no paragraph with any training text (pydoc topics quote each other)
    for held in ("validation", "test"):
        assert not set(pre[held]["text"]) & (set(pre["train"]["text"]) | set(fine["train"]["text"]))
    assert pre["train"]["text"] == offline.offline_text_dataset("pretrain")["train"]["text"]
    # every training paragraph of one part comes from that part's documents only
    docs, split = corpus.offline_documents(), corpus.document_split()
    fine_text = "".join(docs[n] for n in split["finetune"])
    assert all(p.strip("\n") in fine_text for p in fine["train"]["text"][:50])
    with pytest.raises(RecipeError, match="bogus"):
        offline.offline_text_dataset("bogus")


def test_offline_pairs_have_mrpc_schema_and_balanced_labels():
    ds = offline.offline_pair_dataset()
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
    assert ds["train"]["sentence2"] == offline.offline_pair_dataset()["train"]["sentence2"]


def test_offline_images_have_cifar_schema_and_split_by_class():
    pre, fine = offline.offline_image_dataset("pretrain"), offline.offline_image_dataset("finetune")
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
    assert len(pre["test"]) >= 220 and len(pre["train"]) >= 440  # split 50/25/25
    assert sorted(set(fine["validation"]["label"])) == [0, 1, 2, 3, 4]
    assert pre["validation"]["label"] == offline.offline_image_dataset("pretrain")["validation"][
        "label"
    ]


# --- tokenizers ---------------------------------------------------------------------------


def test_tokenizers_train_save_and_reload(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    texts = offline.offline_text_dataset("pretrain")["train"]["text"]
    monkeypatch.setenv("CLION_HF_CACHE", str(tmp_path / "own_cache"))  # counts cache entries
    gpt2 = tokenizer.train_tokenizer("gpt2", texts, vocab_size=300)
    assert len(gpt2) == 300 and gpt2.eos_token == "<|endoftext|>"
    ids = gpt2("The if statement")["input_ids"]
    assert gpt2.decode(ids) == "The if statement"
    bert = tokenizer.train_tokenizer("bert", texts, vocab_size=300)
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
    tokenizer.train_tokenizer("bert", texts, vocab_size=300)
    assert len(list(cached[0].parent.iterdir())) == 2
    with pytest.raises(RecipeError, match="sentencepiece"):
        tokenizer.train_tokenizer("sentencepiece", texts)


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
    both = (tmp_path / "train.txt").read_bytes() + (tmp_path / "val.txt").read_bytes()
    assert data.data_used() == {"data_source": "files",
                                "data_sha256": hashlib.sha256(both).hexdigest()}  # fmt: skip
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


def test_held_out_samples_are_random_fixed_and_disjoint():
    """A capped validation/test set is a random sample (many documents), the same for every
    run; before, the first 128 blocks of one document were the whole test set."""
    from transformers import AutoTokenizer  # noqa: F401  (tokenizer below)

    raw = offline.offline_text_dataset("pretrain")
    tok = tokenizer.train_tokenizer("gpt2", raw["train"]["text"], vocab_size=300)
    a = preprocess.tokenize_and_group(raw, tok, "text", 64, mlm=False, max_eval_samples=64)
    b = preprocess.tokenize_and_group(raw, tok, "text", 64, mlm=False, max_eval_samples=64)
    assert len(a["validation"]) == 64 and a["validation"]["input_ids"] == b["validation"][
        "input_ids"]
    full = preprocess.tokenize_and_group(raw, tok, "text", 64, mlm=False)
    first = full["validation"]["input_ids"][:64]
    assert a["validation"]["input_ids"] != first  # not the first blocks
    assert len(full["test"]) > 1000  # the test split is used whole unless capped
    capped = preprocess.tokenize_and_group(raw, tok, "text", 64, mlm=False, max_test_samples=100)
    assert len(capped["test"]) == 100
    train = {tuple(x) for x in full["train"]["input_ids"]}
    assert not train & {tuple(x) for x in full["test"]["input_ids"]}
    with pytest.raises(RecipeError, match="block size 0 must be >= 1"):
        preprocess.tokenize_and_group(raw, tok, "text", 0, mlm=False)


def test_splits_do_not_depend_on_the_run_seed_and_test_can_be_carved(tmp_path):
    """CIFAR's validation split was carved from train with the run's seed, so every seed
    validated on different images; MRPC has no labelled test split."""
    import inspect

    for fn in (data.load_text_datasets, data.load_classification_datasets,
               data.load_image_datasets):  # fmt: skip
        assert "seed" not in inspect.signature(fn).parameters
    DatasetDict(train=_cifar_like(30, "label"), test=_cifar_like(6, "label")).save_to_disk(
        tmp_path / "cifar")
    first = data.load_image_datasets(data_args(dataset_name=str(tmp_path / "cifar"),
                                               validation_split_percentage=20), "pretrain")[0]
    assert len(first["validation"]) == 6 and len(first["test"]) == 6
    rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "label": i % 2, "idx": i}
            for i in range(40)]  # fmt: skip
    hidden = [{**r, "label": -1} for r in rows[:5]]
    glue = tmp_path / "glue"
    DatasetDict(train=Dataset.from_list(rows), validation=Dataset.from_list(rows[:8]),
                test=Dataset.from_list(hidden)).save_to_disk(glue)  # fmt: skip
    raw, _, _ = data.load_classification_datasets(data_args(dataset_name=str(glue)))
    assert "test" not in raw  # hidden labels are not a test split
    raw, _, _ = data.load_classification_datasets(
        data_args(dataset_name=str(glue), test_split_percentage=10))
    assert len(raw["test"]) == 4 and len(raw["train"]) == 36
    assert min(raw["test"]["label"]) >= 0
    assert not set(raw["test"]["idx"]) & set(raw["train"]["idx"])
    again, _, _ = data.load_classification_datasets(
        data_args(dataset_name=str(glue), test_split_percentage=10))
    assert again["test"]["idx"] == raw["test"]["idx"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", b"", "--train_file '.*empty.txt' is empty"),
        ("binary.txt", bytes(range(256)) * 4, "cannot read .*binary.txt as text: Unicode"),
        ("one.txt", b"just one line\n", "has 1 row\\(s\\): too few to hold out a validation"),
        ("bad.json", b'{"text": "a"}\n{"text": ', "cannot read .*bad.json as json"),
        ("nums.csv", b"a,b\n1,2\n3,4\n5,6\n", "needs a 'text' column"),
    ],
)
def test_bad_text_files_fail_with_one_clear_line(tmp_path, name, content, message):
    """One line naming the file, not a traceback from datasets / the tokenizer."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RecipeError, match=message) as err:
        data.load_text_datasets(data_args(train_file=str(tmp_path / name)), "pretrain")
    assert "\n" not in str(err.value)


def test_bad_classification_and_image_inputs(tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("sentence,label\nok,1\nno,0\n")
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("sentence,score\na,1\nb,0\nc,1\n")
    with pytest.raises(RecipeError, match="needs a 'label' column"):
        data.load_classification_datasets(data_args(train_file=str(nolabel),
                                                    validation_file=str(nolabel)))
    notext = tmp_path / "notext.csv"
    notext.write_text("a,label\n1,1\n2,0\n3,1\n")
    with pytest.raises(RecipeError, match="needs a text column besides 'label'"):
        data.load_classification_datasets(data_args(train_file=str(notext),
                                                    validation_file=str(notext)))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(RecipeError, match="--train_dir '.*empty_dir' holds no files"):
        data.load_image_datasets(data_args(train_dir=str(tmp_path / "empty_dir")), "pretrain")


def test_recipe_arguments_are_checked(tmp_path, monkeypatch):
    """Refused with one line: --max_steps 0 (a division by zero in the scheduler),
    --block_size 0 (it would silently mean the default), a bad --model_name_or_path (a
    traceback)."""
    from clion_hf.workloads.args import check_args, check_pretrained

    def check(data_kw=None, max_steps=10, model=None):
        training = SimpleNamespace(max_steps=max_steps)
        base = dict(block_size=None, max_seq_length=None, max_train_samples=None,
                    max_eval_samples=None, max_test_samples=None,
                    validation_split_percentage=5, test_split_percentage=0,
                    mlm_probability=0.15)  # fmt: skip
        d = SimpleNamespace(**{**base, **(data_kw or {})})
        m = SimpleNamespace(model_name_or_path=model, tokenizer_name=None,
                            image_processor_name=None)  # fmt: skip
        check_args(d, training, m)

    check()
    check(max_steps=-1)  # -1: epochs decide
    for kw, msg in (({"block_size": 0}, "--block_size 0 must be >= 1"),
                    ({"block_size": -4}, "--block_size -4 must be >= 1"),
                    ({"max_seq_length": 0}, "--max_seq_length 0"),
                    ({"max_eval_samples": 0}, "--max_eval_samples 0"),
                    ({"test_split_percentage": 100}, "--test_split_percentage 100")):  # fmt: skip
        with pytest.raises(RecipeError, match=re.escape(msg)):
            check(kw)
    with pytest.raises(RecipeError, match="--max_steps 0 must be >= 1"):
        check(max_steps=0)
    with pytest.raises(RecipeError, match="'/no/such/model' does not exist"):
        check(model="/no/such/model")
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(RecipeError, match="is a directory without config.json"):
        check_pretrained("--model_name_or_path", str(tmp_path / "notamodel"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RecipeError, match="is a file"):
        check_pretrained("--model_name_or_path", str(tmp_path / "afile"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RecipeError, match="not a local directory and the Hub is offline"):
        check_pretrained("--model_name_or_path", "gpt2")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    check_pretrained("--model_name_or_path", "org/model-name")  # a Hub id, online


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


def test_f1_macro_and_a_class_without_positives():
    from clion_hf.workloads.metrics import load_metric

    f1 = load_metric("f1")
    macro = f1.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2], average="macro")
    assert macro["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert f1.compute(predictions=[0, 0], references=[0, 0])["f1"] == 0.0  # no positive
    with pytest.raises(ValueError, match="unsupported average 'micro'; allowed: binary, macro"):
        f1.compute(predictions=[0], references=[0], average="micro")


def test_run_stats_callback_adds_time_memory_and_optimizer_state():
    param = torch.nn.Parameter(torch.zeros(1000))
    opt = torch.optim.AdamW([param])
    state = SimpleNamespace(log_history=[])
    cb = RunStatsCallback()
    cb.on_train_begin(None, state, None)
    # one step of 50 ms, 20 of which in the optimizer; an evaluation of 100 ms after it
    cb.on_step_begin(None, state, None)
    time.sleep(0.03)
    cb.on_pre_optimizer_step(None, state, None)
    time.sleep(0.02)
    cb.on_optimizer_step(None, state, None)
    cb.on_step_end(None, state, None)
    time.sleep(0.1)
    state.log_history.append({"loss": 1.0, "step": 1})
    cb.on_log(None, state, None, logs={"loss": 1.0}, optimizer=opt)
    assert "optimizer_state_mb" not in state.log_history[-1]  # no state before a step
    first = state.log_history[-1]
    assert 0.05 <= first["train_s"] < first["elapsed_s"]  # evaluation time is not training
    assert 0.02 <= first["optimizer_s"] < first["train_s"]
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
