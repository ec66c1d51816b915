"""Node splits of the graph helpers: the masks a published graph checkpoint's metric depends on."""

import torch
from fake_fmnist import write_fake_fmnist
from torch_geometric.data import Data
from torch_geometric.transforms import RandomNodeSplit

from attnzoo.data.graphs import fashion_mnist_knn_graph

MASKS = ("train_mask", "val_mask", "test_mask")


def _mask(num_nodes: int, index: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(num_nodes, dtype=torch.bool)
    mask[index] = True
    return mask


def test_fashion_mnist_knn_split_is_train_val_test_of_one_seeded_permutation(tmp_path):
    root = write_fake_fmnist(tmp_path, n_train=8, n_test=24)
    data = fashion_mnist_knn_graph("test", k=3, num_nodes=21, root=root, seed=5)
    gen = torch.Generator().manual_seed(5)
    pick = torch.randperm(24, generator=gen)[:21]
    state = gen.get_state()
    perm = torch.randperm(21, generator=gen)
    # int() truncates: 12.6 -> 12 train, 4.2 -> 4 val, the other 5 test
    expected = {"train_mask": _mask(21, perm[:12]), "val_mask": _mask(21, perm[12:16]),
                "test_mask": _mask(21, perm[16:])}
    for name in MASKS:
        torch.testing.assert_close(data[name], expected[name], msg=name)
    assert (data.train_mask.int() + data.val_mask.int() + data.test_mask.int() == 1).all()
    assert data.y.tolist() == [k % 10 for k in pick.tolist()]  # fake test labels are arange(24) % 10

    # why the split stays hand-written: RandomNodeSplit, given the same generator state, reads the permutation
    # as val | test | train and rounds the sizes, so it cannot rebuild the masks the checkpoints were scored on
    with torch.random.fork_rng():
        torch.set_rng_state(state)
        pyg = RandomNodeSplit("train_rest", num_val=0.2, num_test=5 / 21)(Data(y=data.y.clone(), num_nodes=21))
    assert [int(pyg[m].sum()) for m in MASKS] == [12, 4, 5]
    assert torch.equal(pyg.val_mask, _mask(21, perm[:4]))
    assert not any(torch.equal(pyg[m], data[m]) for m in MASKS)
