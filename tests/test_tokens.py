import torch

from sparsezip_lmms.llava.tokens import placeholder_runs, resize_image_placeholders, splice_image_features

IMG, PAD = 9, 0


def _rows():
    # row 0: right part holds 2 images of 4 placeholders; row 1 left-padded, 1 image
    ids = torch.tensor(
        [
            [1, 5, IMG, IMG, IMG, IMG, 6, IMG, IMG, IMG, IMG, 7],
            [PAD, PAD, PAD, PAD, PAD, 1, 5, IMG, IMG, IMG, IMG, 8],
        ]
    )
    mask = (ids != PAD).long()
    return ids, mask


def test_runs_are_found_in_prompt_order():
    ids, mask = _rows()
    starts = placeholder_runs(ids, mask, IMG)
    assert starts.nonzero().tolist() == [[0, 2], [0, 7], [1, 7]]


def test_resize_gives_each_image_its_count_and_left_pads():
    ids, mask = _rows()
    out = resize_image_placeholders(ids, mask, IMG, torch.tensor([2, 3, 1]), PAD)
    assert out.lengths.tolist() == [4 + 2 + 3, 3 + 1]
    assert out.input_ids.tolist() == [
        [1, 5, IMG, IMG, 6, IMG, IMG, IMG, 7],
        [PAD] * 5 + [1, 5, IMG, 8],
    ]
    assert out.attention_mask.tolist() == [[1] * 9, [0] * 5 + [1] * 4]


def test_identity_when_counts_are_unchanged():
    ids, mask = _rows()
    out = resize_image_placeholders(ids, mask, IMG, torch.tensor([4, 4, 4]), PAD)
    assert torch.equal(out.input_ids, ids) and torch.equal(out.attention_mask, mask)


def test_wrong_number_of_counts_is_an_error():
    ids, mask = _rows()
    try:
        resize_image_placeholders(ids, mask, IMG, torch.tensor([4, 4]), PAD)
    except ValueError as err:
        assert "3 images" in str(err)
    else:
        raise AssertionError("expected a ValueError")


def test_features_land_in_order_and_padding_is_skipped():
    ids, mask = _rows()
    out = resize_image_placeholders(ids, mask, IMG, torch.tensor([2, 3, 1]), PAD)
    emb = torch.nn.Embedding(16, 3)
    feats = torch.arange(3 * 3 * 3, dtype=torch.float32).reshape(3, 3, 3) + 100  # [n_img, T_max, D]
    valid = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    embeds = splice_image_features(emb, out, IMG, feats, valid)
    slots = out.input_ids == IMG
    assert torch.equal(embeds[slots], feats[valid])
    assert torch.equal(embeds[~slots], emb(out.input_ids)[~slots])
