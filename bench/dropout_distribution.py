"""Is training on packed batches the padded batch's training *in distribution*, dropout on? Mean gradients.

    python bench/dropout_distribution.py N MODE      # MODE: plain, fast, cls, default; N draws a side

The packed path (with MODE's levers: fast dropout, the [CLS]-only last layer, or both = leantune's default)
and the HF path (padded, torch's dropout) each draw N dropout patterns on one batch of a tiny random-init BERT
(hidden dropout and attention dropout 0.1); for every gradient element that is not always zero, z = the
difference of the two mean gradients over its standard error. Equal distributions give mean z^2 ~ 1 and no
|z| far beyond what 20k normal draws reach (~4.3); a real difference grows with N. Needs a tiny model saved
at the path given by TINY (default /tmp/tinybert: tests/conftest.py's _save_tiny("bert", ...) makes one).
"""

import contextlib
import os
import sys

import torch
from transformers import AutoModelForSequenceClassification

from leantune.data.collate import DataCollatorWithPadding
from leantune.speed import fastpath
from leantune.speed.packing import PackedCollator, _packed_unchecked, position_offset

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
fast = len(sys.argv) > 2 and sys.argv[2] == "fast"
torch.manual_seed(0)
model = AutoModelForSequenceClassification.from_pretrained(
    os.environ.get("TINY", "/tmp/tinybert"), hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
)
model.train()
g = torch.Generator().manual_seed(1)
rows = []
for n in (7, 12, 4, 20, 9, 15, 5, 11):
    rows.append(
        {
            "input_ids": [101] + torch.randint(1000, 5000, (n - 2,), generator=g).tolist() + [102],
            "token_type_ids": [0] * n,
            "label": n % 2,
        }
    )
padded = DataCollatorWithPadding(pad_token_id=0)(rows)
packed = PackedCollator(position_offset(model))(rows)
params = [p for p in model.parameters() if p.requires_grad]


def grads(batch, ctx, base=1000):
    out = []
    for i in range(N):
        torch.manual_seed(base + i)
        model.zero_grad()
        with ctx():
            loss = model(**batch).loss
        loss.backward()
        out.append(torch.cat([p.grad.flatten() for p in params]).clone())
    return torch.stack(out)


from leantune.speed.clsonly import cls_only_last_layer

mode = sys.argv[2] if len(sys.argv) > 2 else "plain"


@contextlib.contextmanager
def levers():
    with contextlib.ExitStack() as st:
        if mode in ("fast", "default"):
            st.enter_context(fastpath.fast_training(model))
        if mode in ("cls", "default"):
            st.enter_context(cls_only_last_layer(model))
        yield


pd = grads(padded, contextlib.nullcontext)  # the HF path: padded, torch's dropout


@contextlib.contextmanager
def packed_ctx():
    with levers(), _packed_unchecked(model):
        yield


pk = grads({k: v for k, v in packed.items()}, packed_ctx, base=50000)
diff = pk.mean(0) - pd.mean(0)
se = ((pk.var(0) + pd.var(0)) / N).sqrt()
live = se > 1e-9
z = torch.where(live, diff / se.clamp_min(1e-12), torch.zeros_like(se))
names = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
off = 0
zl = z[live]
print(
    f"N={N} live {int(live.sum())}: |z|>4 fraction {(zl.abs() > 4).float().mean():.4f}, max |z| {zl.abs().max():.1f}, mean z^2 {(zl**2).mean():.2f}"
)
for n, k in names:
    zz = z[off : off + k][live[off : off + k]]
    off += k
    if zz.numel() and ((zz**2).mean() > 1.5 or zz.abs().max() > 5.5):
        print(
            f"  {n}: mean z^2 {(zz**2).mean():.2f}, max |z| {zz.abs().max():.1f}, rel diff {(diff[off - k : off].norm() / pd.mean(0)[off - k : off].norm()):.3f}"
        )
