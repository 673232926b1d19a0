import pytest
import torch

from dalle_pytorch.images import grid_of_rows, make_grid, tensor_to_pil


def test_tensor_to_pil_round_trip_values():
    t = torch.tensor([0.0, 0.5, 1.0, 2.0]).view(1, 2, 2)
    im = tensor_to_pil(t)
    assert im.mode == "L" and [im.getpixel((x, y)) for y in range(2) for x in range(2)] == [0, 128, 255, 255]
    assert tensor_to_pil(torch.zeros(3, 4, 5)).size == (5, 4)
    with pytest.raises(ValueError):
        tensor_to_pil(torch.zeros(2, 4, 4))


def test_grids():
    ims = [tensor_to_pil(torch.full((3, 4, 4), v)) for v in (0.0, 1.0, 0.0)]
    g = make_grid(ims, padding=1)
    assert g.size == (1 + 2 * 5, 1 + 2 * 5)
    assert g.getpixel((6, 1)) == (255, 255, 255)
    ragged = grid_of_rows([ims, ims[:1]], padding=0)
    assert ragged.size == (12, 8)
    with pytest.raises(ValueError):
        grid_of_rows([[]])
