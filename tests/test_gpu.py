"""CUDA-graph training steps (leantune/speed/cudagraph.py) against eager steps; opt-in: `pytest -m gpu`."""

from __future__ import annotations

import pytest
import torch

from leantune.speed.cudagraph import GraphedStep

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _no_dropout_model(model_dir: str):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    return model.cuda().train()


def _batch(rows: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, length // 2 :] = 0  # one row shorter than the batch
    ids[mask == 0] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.randint(0, 2, (rows,), generator=g),
    }


def _eager_grads(model, batch) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(**{k: v.cuda() for k, v in batch.items()}).loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_graph_replays_give_the_eager_gradients_of_each_batch(tiny_bert):
    import copy

    model = _no_dropout_model(tiny_bert)
    twin = copy.deepcopy(model)  # the same weights, run eagerly on the unpadded batches
    step = GraphedStep(model, pad_token_id=0, loss_scale=1.0, bucket=16)
    # 21 and 27 share the 32 bucket (one capture, then a replay); 9 is another shape (a second graph)
    for length, seed in [(21, 0), (27, 1), (9, 2), (21, 3)]:
        batch = _batch(8, length, seed)
        expected = _eager_grads(twin, batch)
        if step.grads is not None:
            for g in step.grads:
                g.zero_()
        loss = step(batch)
        with torch.no_grad():
            eager_loss = twin(**{k: v.cuda() for k, v in batch.items()}).loss
        assert torch.allclose(loss, eager_loss, atol=1e-5), (length, loss, eager_loss)
        for p, e in zip(model.parameters(), expected):
            assert torch.allclose(p.grad, e, atol=1e-5, rtol=1e-4), (length, (p.grad - e).abs().max())
    assert len(step.graphs) == 2


def test_gradients_replaced_after_capture_are_refused(tiny_bert):
    model = _no_dropout_model(tiny_bert)
    step = GraphedStep(model)
    step(_batch(4, 12, 0))
    model.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="set_to_none=False"):
        step(_batch(4, 12, 1))


def test_trainer_with_graphs_trains_like_the_eager_trainer(tiny_bert, tmp_path):
    from test_trainer import _trainer

    def final_params(graphs: bool):
        trainer, _ = _trainer(
            tiny_bert,
            tmp_path / str(graphs),
            num_train_epochs=2,
            eval_strategy="epoch",
            cuda_graphs=graphs,
            pad_to_multiple_of=16,
        )
        for m in trainer.model.modules():  # dropout off: both runs then do the same maths
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        result = trainer.train()
        assert trainer._graphs is graphs
        return torch.cat([p.detach().flatten().cpu() for p in trainer.model.parameters()]), result

    eager, r_eager = final_params(False)
    graphed, r_graphed = final_params(True)
    assert torch.allclose(eager, graphed, atol=1e-4), (eager - graphed).abs().max()
    assert abs(r_eager.training_loss - r_graphed.training_loss) < 1e-4


def test_use_cpu_keeps_a_gpu_machine_on_the_cpu(tiny_bert, tmp_path):
    from test_trainer import _trainer

    trainer, _ = _trainer(tiny_bert, tmp_path, num_train_epochs=1, use_cpu=True)
    assert trainer.accelerator.device.type == "cpu" and not trainer._graphs
    trainer.train()
    assert next(trainer.model.parameters()).device.type == "cpu"
