import pytest
import torch

from aim_core.errors import SettingsError
from aim_core.merge import bipartite_merge_step, merge_frames, merged_count


def random_tokens(frames: int = 3, n: int = 196, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, n, dim, generator=torch.Generator().manual_seed(seed))


def test_keep_ratio_one_is_identity():
    tokens = random_tokens()
    result = merge_frames(tokens, 1.0)
    assert torch.equal(result.tokens, tokens)
    assert torch.equal(result.source, torch.arange(196).expand(3, 196))
    assert torch.equal(result.sizes, torch.ones(3, 196, dtype=torch.long))


@pytest.mark.parametrize("ratio, expected", [(0.5, 98), (0.25, 49), (0.75, 147), (0.1, 20), (0.01, 2), (0.3, 59)])
def test_any_ratio_reaches_its_count(ratio, expected):
    result = merge_frames(random_tokens(), ratio)
    assert result.tokens.shape == (3, expected, 16)
    assert result.sizes.shape == (3, expected)
    assert merged_count(196, ratio) == expected


def test_sizes_and_source_account_for_every_token():
    result = merge_frames(random_tokens(), 0.25)
    assert (result.sizes.sum(dim=1) == 196).all()
    for frame in range(3):
        counts = torch.bincount(result.source[frame], minlength=49)
        assert torch.equal(counts, result.sizes[frame])


def test_merged_token_is_the_mean_of_its_cluster():
    """Size-weighted means compose: every survivor equals the plain mean of the original tokens it absorbed."""
    tokens = random_tokens(frames=2, n=64, dim=8)
    result = merge_frames(tokens, 0.2)
    for frame in range(2):
        for survivor in range(result.tokens.shape[1]):
            members = tokens[frame][result.source[frame] == survivor]
            torch.testing.assert_close(result.tokens[frame, survivor], members.mean(dim=0), rtol=1e-5, atol=1e-5)


def test_survivors_keep_their_spatial_order():
    """Each survivor is a B (odd) token, or an A token nobody merged; survivors come in their original order."""
    tokens = random_tokens()
    _, _, destination = bipartite_merge_step(tokens, torch.ones(3, 196, dtype=torch.long), r=60)
    for frame in range(3):
        representatives = []
        for survivor in range(196 - 60):
            members = (destination[frame] == survivor).nonzero()[:, 0]
            odd = members[members % 2 == 1]
            assert len(odd) <= 1 and (len(odd) == 1 or len(members) == 1)
            representatives.append(int(odd[0]) if len(odd) else int(members[0]))
        assert representatives == sorted(representatives)


def test_identical_tokens_merge_first():
    """Exact duplicates are the most similar pairs, so one round removes exactly them."""
    tokens = random_tokens(frames=1, n=8, dim=32)
    tokens[0, 2] = tokens[0, 5]  # A token 2 duplicates B token 5
    tokens[0, 6] = tokens[0, 1] * 3  # same direction: cosine similarity 1
    merged, sizes, destination = bipartite_merge_step(tokens, torch.ones(1, 8, dtype=torch.long), r=2)
    # survivors are positions 0, 1, 3, 4, 5, 7; position 2 joined 5 (survivor 4), position 6 joined 1
    assert destination[0].tolist() == [0, 1, 4, 2, 3, 4, 1, 5]
    assert sizes[0].tolist() == [1, 2, 1, 1, 2, 1]
    torch.testing.assert_close(merged[0, 1], (tokens[0, 1] + tokens[0, 6]) / 2)


def test_two_rounds_for_a_quarter_like_the_released_code():
    """196 -> 98 -> 49: the first round folds every A (even) token into a B token, so exactly the Bs survive."""
    tokens = random_tokens(frames=1)
    _, sizes, destination = bipartite_merge_step(tokens, torch.ones(1, 196, dtype=torch.long), r=98)
    assert torch.equal(destination[0, 1::2], torch.arange(98))
    assert sizes.sum() == 196
    assert merge_frames(tokens, 0.25).tokens.shape[1] == 49


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5])
def test_bad_ratio(ratio):
    with pytest.raises(SettingsError):
        merge_frames(random_tokens(), ratio)
