"""The last layer for [CLS] only (leantune/speed/clsonly.py): same logits and gradients, less work."""

from __future__ import annotations

import pytest
import torch
from conftest import toy_rows
from datasets import Dataset, DatasetDict
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    MPNetConfig,
    MPNetForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from leantune import Trainer, TrainingArguments, tokenize
from leantune.speed import packing
from leantune.speed.clsonly import cls_only_last_layer, last_layer, why_not

SIZES = {
    "vocab_size": 120,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def _model(kind: str, attn: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "bert":
        model = BertForSequenceClassification(BertConfig(**SIZES, num_labels=3))
    elif kind == "roberta":
        model = RobertaForSequenceClassification(RobertaConfig(**SIZES, num_labels=3, pad_token_id=1))
    elif kind == "electra":
        model = ElectraForSequenceClassification(ElectraConfig(**SIZES, embedding_size=32, num_labels=3))
    elif kind == "modernbert":  # 3 layers: the last is a sliding-window one (a window of 8 over 11 tokens)
        model = ModernBertForSequenceClassification(
            ModernBertConfig(
                vocab_size=120,
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
                pad_token_id=1,
                bos_token_id=2,
                eos_token_id=3,
                cls_token_id=2,
                sep_token_id=3,
                local_attention=8,
                num_labels=3,
                classifier_pooling="cls",
            )
        )
    elif kind == "mpnet":
        model = MPNetForSequenceClassification(
            MPNetConfig(**{**SIZES, "max_position_embeddings": 80}, num_labels=3, pad_token_id=1)
        )
    else:
        model = DistilBertForSequenceClassification(
            DistilBertConfig(
                vocab_size=120, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64, num_labels=3
            )
        )
    model.config._attn_implementation = attn
    return model


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 120, (4, 11), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate((11, 7, 3, 9)):  # padded rows: the mask matters in the [CLS] row too
        mask[row, length:] = 0
        ids[row, length:] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}


def _logits_and_grads(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "kind,attn",
    [
        ("bert", "sdpa"),
        ("bert", "eager"),
        ("roberta", "sdpa"),
        ("electra", "sdpa"),
        ("distilbert", "sdpa"),
        ("distilbert", "eager"),
        ("mpnet", "eager"),
        ("modernbert", "sdpa"),
        ("modernbert", "eager"),
    ],
)
def test_same_logits_and_gradients_as_the_full_last_layer(kind, attn):
    model, batch = _model(kind, attn).eval(), _batch()  # eval: no dropout, so both runs are deterministic
    full_logits, full_grads = _logits_and_grads(model, batch)
    with cls_only_last_layer(model) as applied:
        logits, grads = _logits_and_grads(model, batch)
    assert applied
    torch.testing.assert_close(logits, full_logits, rtol=1e-5, atol=1e-6)
    assert grads.keys() == full_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_last_layer_runs_one_row_inside_and_every_row_after():
    model, batch = _model("bert"), _batch()
    layer = last_layer(model)
    assert why_not(model) is None  # the probes run once, before the hook below counts rows
    rows: list[int] = []
    layer.intermediate.dense.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[1]))
    with cls_only_last_layer(model):
        with cls_only_last_layer(model):  # nested (evaluation inside training) keeps the outer patch
            model(**batch)
        model(**batch)
    model(**batch)
    assert rows == [1, 1, 11]
    assert "forward" not in layer.__dict__


def test_models_whose_head_reads_every_position_are_left_alone():
    model = BertForTokenClassification(BertConfig(**SIZES))
    with cls_only_last_layer(model) as applied:
        assert not applied
    decoder = BertForSequenceClassification(BertConfig(**SIZES, is_decoder=True))
    with cls_only_last_layer(decoder) as applied:
        assert not applied
    with cls_only_last_layer(_model("bert"), enabled=False) as applied:
        assert not applied


def test_training_with_and_without_it_ends_at_the_same_weights(tiny_bert, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    data = tokenize(DatasetDict({"train": Dataset.from_list(toy_rows(48))}), tok, ("sentence1", "sentence2"))["train"]
    weights, metrics = [], []
    for on in (True, False):
        # no dropout: the two runs' random streams would differ (fewer masks drawn), not their maths
        model = AutoModelForSequenceClassification.from_pretrained(
            tiny_bert, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )
        args = TrainingArguments(
            str(tmp_path / str(on)),
            num_train_epochs=2,
            learning_rate=1e-3,
            seed=0,
            cls_only_last_layer=on,
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = Trainer(model, args, train_dataset=data, eval_dataset=data, processing_class=tok)
        why_not(model)  # the probes (run once per model) before the hook counts rows
        packing.why_not(model, cls_only=on)  # and the packed batches' probe, with the layer as training runs it
        rows: set[int] = set()  # positions the last layer's feed-forward saw, in training and evaluation
        last_layer(model).intermediate.dense.register_forward_hook(lambda m, i, o, rows=rows: rows.add(i[0].shape[1]))
        trainer.train()
        metrics.append(trainer.evaluate()["eval_loss"])
        assert (rows == {1}) if on else (min(rows) > 1)
        weights.append(trainer.model.state_dict())
        assert "forward" not in last_layer(trainer.model).__dict__  # the user's model is given back unpatched
    for name, w in weights[0].items():
        torch.testing.assert_close(w, weights[1][name], rtol=1e-4, atol=1e-5, msg=name)
    assert metrics[0] == pytest.approx(metrics[1], rel=1e-4)


class MeanPooler(torch.nn.Module):
    """A pooler that averages every position: the head then reads more than [CLS]."""

    def __init__(self, pooler: torch.nn.Module) -> None:
        super().__init__()
        self.inner = pooler

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.inner(hidden_states.mean(dim=1, keepdim=True))


def test_a_head_that_reads_other_positions_is_refused_by_the_probe():
    model = _model("bert").eval()
    model.bert.pooler = MeanPooler(model.bert.pooler)  # same class name, same structure: only a probe can tell
    problem = why_not(model)
    assert problem is not None and "reads more than position 0" in problem
    batch = _batch()
    full = model(**batch).logits
    with cls_only_last_layer(model) as applied:
        assert not applied
        torch.testing.assert_close(model(**batch).logits, full, rtol=0, atol=0)


def test_a_last_layer_that_computes_something_else_is_refused_by_the_probe():
    model = _model("bert").eval()
    layer = last_layer(model)
    base = type(layer)
    # a subclass the structure check cannot tell from BERT's layer: its full forward scales the output
    layer.__class__ = type("ScaledLayer", (base,), {"forward": lambda self, *a, **k: base.forward(self, *a, **k) * 1.5})
    assert "did not give the full layer's logits" in why_not(model)


class GatedPooler(torch.nn.Module):
    """BERT's pooler plus a gated mean over every position, the gate 0 at init: the logits read [CLS] alone
    at first, but the gate's gradient reads every position."""

    def __init__(self, pooler: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.gate = pooler, torch.nn.Parameter(torch.zeros(1))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.inner(hidden_states) + self.gate * hidden_states.mean(1)


class LoRALinear(torch.nn.Linear):
    """An adapter on the key/value projection (B = 0 at init): the fold would read only the base weight."""

    def __init__(self, base: torch.nn.Linear) -> None:
        super().__init__(base.in_features, base.out_features)
        self.load_state_dict(base.state_dict())
        self.lora_a = torch.nn.Parameter(torch.randn(2, base.in_features))
        self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x @ self.lora_a.t() @ self.lora_b.t()


def test_paths_that_are_zero_at_init_but_train_differently_are_refused():
    gated = _model("bert")
    gated.bert.pooler = GatedPooler(gated.bert.pooler)
    assert "gradient for bert.pooler.gate" in why_not(gated)
    adapted = _model("bert")
    last_layer(adapted).attention.self.value = LoRALinear(last_layer(adapted).attention.self.value)
    assert "not plain nn.Linear" in why_not(adapted)


def test_the_answer_follows_the_model_and_the_probe_leaves_it_as_it_was():
    model = _model("bert")
    model.train()
    model.bert.embeddings.eval()  # a module in its own mode must stay so
    wrapped = last_layer(model).forward  # an instance forward of someone else's (another library's hook)
    assert why_not(model) is None
    assert model.training and not model.bert.embeddings.training
    model.bert.pooler = MeanPooler(model.bert.pooler)  # changed after the first answer: asked again
    assert "reads more than position 0" in why_not(model)
    model.bert.pooler = model.bert.pooler.inner
    assert why_not(model) is None
    last_layer(model).forward = wrapped
    assert "replaced by other code" in why_not(model)
    with cls_only_last_layer(model) as applied:
        assert not applied
    assert last_layer(model).__dict__["forward"] is wrapped  # never removed
    model.config.vocab_size = 10_000  # larger than the embedding: the probe's ids come from the embedding
    del last_layer(model).forward
    assert why_not(model) is None


def test_a_model_the_probe_cannot_run_is_left_alone():
    model = _model("bert")
    model.forward = lambda **kw: (_ for _ in ()).throw(ValueError("needs other inputs"))
    with cls_only_last_layer(model) as applied:
        assert not applied
    assert "could not run this model (ValueError: needs other inputs)" in why_not(model)


def test_hidden_states_and_attentions_get_every_position():
    model, batch = _model("bert", "eager").eval(), _batch()  # eager: SDPA returns no attention weights
    full = model(**batch, output_hidden_states=True, output_attentions=True)
    with cls_only_last_layer(model) as applied:
        assert applied
        out = model(**batch, output_hidden_states=True, output_attentions=True)
        short = model(**batch)
    assert out.hidden_states[-1].shape == full.hidden_states[-1].shape == (4, 11, 32)
    assert len(out.attentions) == len(full.attentions) == 2
    torch.testing.assert_close(out.logits, full.logits)
    torch.testing.assert_close(short.logits, full.logits, rtol=1e-5, atol=1e-6)
    configured = _model("bert")
    configured.config.output_hidden_states = True
    assert "hidden states" in why_not(configured)


@pytest.mark.parametrize("kind", ["bert", "distilbert", "mpnet"])
def test_the_cls_layers_attention_dropout_runs_in_training(kind):
    """Only the last layer's attention dropout is on (p = 0.5): its logits must vary from draw to draw, with
    the same mean as the full layer's (the [CLS] row is unbiased either way)."""
    model, batch = _model(kind, "eager" if kind == "mpnet" else "sdpa"), _batch()  # MPNet has no SDPA path
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    path = {"bert": "attention.self.dropout", "distilbert": "attention.dropout", "mpnet": "attention.attn.dropout"}
    last_layer(model).get_submodule(path[kind]).p = 0.5
    assert why_not(model) is None
    model.train()
    batch.pop("labels")

    def draws(n: int) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([model(**batch).logits for _ in range(n)])

    torch.manual_seed(0)
    full = draws(300)
    with cls_only_last_layer(model) as applied:
        assert applied
        cls_only = draws(300)
    assert cls_only.std(0).min() > 0  # the mask changes from draw to draw: dropout is applied
    assert cls_only.std(0).mean() == pytest.approx(float(full.std(0).mean()), rel=0.25)
    spread = full.std(0).max()
    assert (cls_only.mean(0) - full.mean(0)).abs().max() < 4 * spread / 300**0.5
