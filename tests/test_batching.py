import torch

from nlora.batching import Encoded, batch_order, collate_train, fit_length
from nlora.families import DECODER_ONLY
from nlora.logits import task_loss
from nlora.models import load_model


def test_fit_length_keeps_head_and_tail():
    ids = list(range(100))
    out = fit_length(ids, 20, head=8)
    assert len(out) == 20 and out[:8] == ids[:8] and out[-12:] == ids[-12:]
    assert fit_length(ids[:10], 20) == ids[:10]


def test_batch_order_covers_everything_and_groups_lengths():
    lengths = [i % 37 for i in range(400)]
    batches = batch_order(lengths, 8, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(400))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    ungrouped = batch_order(lengths, 8, seed=3, group_by_length=False)
    spread_u = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in ungrouped) / len(ungrouped)
    assert spread < spread_u / 3
    assert batch_order(lengths, 8, seed=3) == batches


def test_left_padded_causal_loss_equals_per_example_loss(model_dirs):
    """Answer-only loss on a padded batch equals the token-weighted mean of unpadded examples' losses."""
    loaded = load_model(str(model_dirs["llama"]))
    model = loaded.model.eval()
    rows = [Encoded([5, 6, 7, 8, 9, 10], [11, 12, 1]), Encoded([5, 6], [13, 1]), Encoded([7, 8, 9], [14, 15, 16, 1])]
    batch = collate_train(rows, 0, family=DECODER_ONLY)
    assert batch["input_ids"][1, :4].tolist() == [0, 0, 0, 0]  # left padding
    with torch.no_grad():
        padded = task_loss(model, batch, family=DECODER_ONLY, keep_logits=True)
        full_logits = task_loss(model, batch, family=DECODER_ONLY, keep_logits=False)
        total, count = 0.0, 0
        for r in rows:
            ids = torch.tensor([r.source + r.target])
            lg = model(input_ids=ids).logits[0]
            n = len(r.target)
            lp = torch.log_softmax(lg[-n - 1 : -1], -1)
            total += -lp[torch.arange(n), torch.tensor(r.target)].sum().item()
            count += n
    assert abs(padded.item() - total / count) < 1e-5
    assert abs(full_logits.item() - padded.item()) < 1e-6
