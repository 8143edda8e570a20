"""GLUE with RoBERTa, without a download: a tokenizer trained on the fly (tokenizers), a tiny random
RoBERTa saved like a real checkpoint, and tiny copies of the tasks in GLUE's TSV and in the
`datasets` on-disk formats."""

import json

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from msam import engine, runs
from msam.data.tokens import TokenLoader
from msam.errors import ConfigError
from msam.metrics import confusion_update, from_confusion

WORDS = "the cat sat on a mat dog ran far away good bad movie film great awful not very".split()


def sentence(i, length=6):
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(length + i % 5))


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    """A save_pretrained directory: tiny RoBERTa weights, config and a byte-level BPE tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

    out = tmp_path_factory.mktemp("roberta")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([sentence(i) for i in range(100)], vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                     sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                     mask_token="<mask>")
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=80, pad_token_id=1)
    RobertaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    """CoLA as GLUE's TSV files (no header) and MRPC as a saved DatasetDict."""
    import datasets

    root = tmp_path_factory.mktemp("glue")
    (root / "cola").mkdir()
    for split, n in (("train", 64), ("dev", 24)):
        lines = [f"src\t{i % 2}\t{'*' if i % 2 == 0 else ''}\t{sentence(i)}" for i in range(n)]
        (root / "cola" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    splits = {split: datasets.Dataset.from_dict({"sentence1": [sentence(i) for i in range(n)],
                                                 "sentence2": [sentence(i + 3) for i in range(n)],
                                                 "label": [int(i % 3 == 0) for i in range(n)],
                                                 "idx": list(range(n))})
              for split, n in (("train", 64), ("validation", 24))}
    datasets.DatasetDict(splits).save_to_disk(str(root / "mrpc"))
    return root


def glue_cfg(make_cfg, roberta_dir, glue_dir, task, method, *extra):
    return make_cfg(f"experiment=tab3_{task}_{method}", f"model.checkpoint={roberta_dir}",
                    f"dataset.path={glue_dir / task}", "epochs=1", "batch_size=16", "eval_batch_size=8",
                    "optim.lr=1e-3", *extra)


@pytest.mark.parametrize("task,method", [("cola", "vanilla"), ("cola", "sam"), ("cola", "msam"), ("mrpc", "msam")])
def test_fine_tunes_roberta_on_a_local_glue_copy(make_cfg, roberta_dir, glue_dir, task, method):
    cfg = glue_cfg(make_cfg, roberta_dir, glue_dir, task, method, *(["method.m=4"] if method == "msam" else []))
    summary = engine.train(cfg)
    assert summary["status"] == "finished" and summary["derived"]["steps_per_epoch"] == 4
    assert summary["dataset"] == task and summary["model"] == "roberta_base"
    # the reported metric, recomputed independently: the saved weights' predictions on the dev set, scored by sklearn
    labels, predictions = dev_predictions(cfg)
    extra, score = ("test_mcc", matthews_corrcoef) if task == "cola" else ("test_f1", f1_score)
    assert summary[extra] == pytest.approx(100 * score(labels, predictions), abs=1e-9)
    assert summary["test_acc"] == pytest.approx(100 * accuracy_score(labels, predictions), abs=1e-9)


def dev_predictions(cfg):
    from msam.data import build_data
    from msam.methods.base import model_output
    from msam.models import build_model

    data = build_data(cfg.dataset, cfg.batch_size, cfg.eval_batch_size, cfg.seed, torch.device("cpu"))
    model = build_model(cfg.model, data.num_classes, data.input_shape)
    model.load_state_dict(torch.load(runs.run_dir_for(cfg) / "last.pt", weights_only=True)["model"])
    model.eval()
    labels, predictions = [], []
    with torch.no_grad():
        for inputs, targets in data.test.epoch(0):
            labels += targets.tolist()
            predictions += model_output(model, inputs).argmax(1).tolist()
    return labels, predictions


def test_training_moves_the_weights_and_resumes_to_the_same_place(make_cfg, roberta_dir, glue_dir, train_interrupted):
    cfg = glue_cfg(make_cfg, roberta_dir, glue_dir, "cola", "msam", "method.m=4", "epochs=2")
    resumed = train_interrupted(cfg, in_epoch=2)
    straight = engine.train(glue_cfg(make_cfg, roberta_dir, glue_dir, "cola", "msam", "method.m=4", "epochs=2",
                                     "paths.runs=" + str(runs.run_dir_for(cfg).parent) + "_straight"))
    assert resumed["train_loss"] == straight["train_loss"] and resumed["test_mcc"] == straight["test_mcc"]
    from transformers import AutoModelForSequenceClassification

    start = AutoModelForSequenceClassification.from_pretrained(roberta_dir, num_labels=2).state_dict()
    trained = torch.load(runs.run_dir_for(cfg) / "last.pt", weights_only=True)["model"]
    moved = [key for key in start if key in trained and not torch.equal(start[key], trained[key])]
    assert len(moved) > len(start) // 2  # training changed most of the pretrained tensors, not just the head


def test_a_missing_copy_is_one_line_saying_how_to_get_it(make_cfg, roberta_dir, tmp_path):
    from msam.config import check_config

    cfg = make_cfg("experiment=tab3_sst2_sam", f"model.checkpoint={roberta_dir}", f"dataset.path={tmp_path}/none")
    with pytest.raises(ConfigError, match=r"GLUE sst2 not found: .*save_to_disk\(PATH\)"):
        check_config(cfg)


def test_the_table_3_rows_refuse_to_start_without_roberta_weights(make_cfg):
    from msam.config import check_config

    with pytest.raises(ConfigError, match="model.checkpoint=PATH"):
        check_config(make_cfg("experiment=tab3_qqp_msam"))


def test_a_text_data_set_needs_a_text_model(make_cfg):
    from msam.config import check_config

    with pytest.raises(ConfigError, match="dataset=cola does not go with model=small_cnn"):
        check_config(make_cfg("dataset=cola"))


@pytest.mark.parametrize("classes", [2, 3])
def test_metrics_match_scikit_learn(classes):
    gen = torch.Generator().manual_seed(classes)
    targets = torch.randint(0, classes, (200,), generator=gen)
    predictions = torch.where(torch.rand(200, generator=gen) < 0.7, targets, torch.randint(0, classes, (200,), generator=gen))
    confusion = torch.zeros(classes, classes, dtype=torch.float64)
    for part in range(4):  # summed batch by batch, as in evaluation
        confusion_update(confusion, targets[part * 50:(part + 1) * 50], predictions[part * 50:(part + 1) * 50])
    ours = from_confusion(confusion, ["mcc"] + (["f1"] if classes == 2 else []))
    assert ours["test_mcc"] == pytest.approx(100 * matthews_corrcoef(targets, predictions), abs=1e-10)
    if classes == 2:
        assert ours["test_f1"] == pytest.approx(100 * f1_score(targets, predictions), abs=1e-10)
    assert confusion.trace() / confusion.sum() == pytest.approx(accuracy_score(targets, predictions))
    constant = torch.zeros(2, 2, dtype=torch.float64)
    confusion_update(constant, targets[:10] % 2, torch.zeros(10, dtype=torch.long))
    assert from_confusion(constant, ["mcc", "f1"]) == {"test_mcc": 0.0, "test_f1": 0.0}  # sklearn's conventions


def test_token_batches_pad_to_their_longest_and_shard_exactly():
    ids = [[0] + [5] * k + [2] for k in range(1, 9)]
    labels = torch.arange(8) % 2
    single = list(TokenLoader(ids, labels, 1, 4, True, True, torch.device("cpu"), seed=3).epoch(0))
    shards = [list(TokenLoader(ids, labels, 1, 4, True, True, torch.device("cpu"), seed=3, shard=(r, 2)).epoch(0))
              for r in range(2)]
    for k, (inputs, targets) in enumerate(single):
        lengths = inputs["attention_mask"].sum(1)
        assert inputs["input_ids"].shape[1] == lengths.max() and (inputs["input_ids"][inputs["attention_mask"] == 0] == 1).all()
        joined = torch.cat([shards[r][k][0]["input_ids"] for r in range(2)])
        assert torch.equal(joined, inputs["input_ids"]) and torch.equal(torch.cat([shards[r][k][1] for r in range(2)]), targets)
