"""The model card: defaults, validation, dict / JSON round trips and the card.json spellings."""

import json

import pytest

from segtile.models import CardError, ModelCard, default_card


def test_defaults_fill_colours_and_identity_normalisation():
    card = ModelCard(classes=["a", "b", "c"], in_channels=2)
    assert card.colors == ("#1f77b4", "#ff7f0e", "#2ca02c")
    assert card.mean == (0.0, 0.0) and card.std == (1.0, 1.0) and card.scale == 1.0
    assert card.bands is None and card.num_classes == 3
    assert (card.tile_size, card.overlap) == (512, 64)


def test_default_palette_cycles_for_many_classes():
    card = ModelCard(classes=[str(i) for i in range(12)])
    assert card.colors[10] == card.colors[0] and len(set(card.colors[:10])) == 10


def test_default_card_numbers_its_classes():
    card = default_card(3, 4)
    assert card.classes == ("class_0", "class_1", "class_2") and card.in_channels == 4


def full_card() -> ModelCard:
    return ModelCard(
        classes=["water", "land"], colors=["#0000ff", "#00FF00"], in_channels=3, bands=[3, 2, 1],
        mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5], scale=255, resolution=0.25,
        resolution_unit="um", resolution_range=(0.2, 0.5), tile_size=256, overlap=32, extra={"licence": "CC0"},
    )


def test_dict_and_json_round_trips():
    card = full_card()
    data = card.to_dict()
    assert data["classes"] == ["water", "land"] and data["bands"] == [3, 2, 1]
    json.dumps(data)  # JSON-ready: lists and plain numbers only
    assert ModelCard.from_dict(data) == card
    assert ModelCard.from_json(card.to_json()) == card


def test_cards_are_hashable_and_compare_by_value():
    assert hash(full_card()) == hash(full_card()) and full_card() == full_card()


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"classes": ["a"], "bands": 4}', {"in_channels": 4, "bands": None}),
        ('{"classes": ["a"], "bands": [4, 3, 2]}', {"in_channels": 3, "bands": (4, 3, 2)}),
        ('{"classes": ["a"], "mean": [0.5], "std": [0.2]}', {"in_channels": 1, "mean": (0.5,)}),
        ('{"classes": ["a"], "mpp": 0.5}', {"resolution": 0.5, "resolution_unit": "um"}),
        ('{"classes": ["a"], "resolution": 10}', {"resolution": 10.0, "resolution_unit": "m"}),
        ('{"classes": ["a"], "resolution": 10}', {"resolution_range": None}),  # cards from before the range
        ('{"classes": ["a"], "resolution": 10, "resolution_range": [5, 20]}', {"resolution_range": (5.0, 20.0)}),
        ('{"classes": ["a"], "mpp": 0.5, "resolution_range": [0.25, 1]}',
         {"resolution_range": (0.25, 1.0), "resolution_unit": "um"}),
        ('{"classes": ["a"], "scale": 65535}', {"scale": 65535.0}),
        ('{"classes": ["a"], "licence": "MIT"}', {"extra": {"licence": "MIT"}}),
    ],
)
def test_card_json_spellings(text, expected):
    card = ModelCard.from_json(text)
    for name, value in expected.items():
        assert getattr(card, name) == value, name


def test_from_dict_does_not_modify_its_argument():
    data = {"classes": ["a"], "extra": {"k": 1}, "note": 2}
    card = ModelCard.from_dict(data)
    assert card.extra == {"k": 1, "note": 2}
    assert data == {"classes": ["a"], "extra": {"k": 1}, "note": 2}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": []}, "'classes' is empty"),
        ({"classes": "water"}, "list of strings"),
        ({"colors": ["#000000"]}, "1 colours for 2 classes"),
        ({"colors": ["#000000", "blue"]}, "'blue' is not of the form"),
        ({"in_channels": 0, "mean": [], "std": []}, "at least 1"),
        ({"bands": [1, 2]}, "2 band indices for 3 input channels"),
        ({"bands": [0, 1, 2]}, "1-based"),
        ({"mean": [0.0]}, "1 'mean' values for 3"),
        ({"std": [1.0, 0.0, 1.0]}, "non-zero"),
        ({"std": [1.0, float("nan"), 1.0]}, "'std' holds nan: normalising pixels needs finite numbers"),
        ({"mean": [float("-inf"), 0.0, 0.0]}, "'mean' holds -inf"),
        ({"scale": float("inf")}, "'scale' holds inf"),
        ({"resolution": float("nan")}, "positive number, not nan"),
        ({"scale": 0}, "'scale' must be non-zero"),
        ({"resolution": -1.0}, "positive"),
        ({"resolution_unit": "ft"}, "'m' or 'um'"),
        ({"resolution_range": (2.0, 1.0), "resolution_unit": "m"}, r"\[smallest, largest\], two positive numbers"),
        ({"resolution_range": (0.0, 1.0), "resolution_unit": "m"}, "two positive numbers"),
        ({"resolution_range": (1.0, float("nan")), "resolution_unit": "m"}, "two positive numbers"),
        ({"resolution_range": 5.0, "resolution_unit": "m"}, "two positive numbers"),
        ({"resolution_range": (1.0, 2.0)}, "needs a 'resolution_unit'"),
        ({"resolution_range": (1.0, 2.0), "resolution": 3.0, "resolution_unit": "m"},
         r"'resolution' 3 lies outside 'resolution_range' \[1, 2\]"),
        ({"tile_size": 64, "overlap": 64}, "overlap < tile_size"),
        ({"overlap": -1}, "overlap < tile_size"),
    ],
)
def test_inconsistent_cards_raise_card_error(kwargs, message):
    with pytest.raises(CardError, match=message):
        ModelCard(**{"classes": ["a", "b"], "in_channels": 3, **kwargs})


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"bands": 3}', "'classes' is missing"),
        ('{"classes": 3}', "model card"),
        ('{"classes": ["a"], "bands": "rgb"}', "count or a list"),
        ('{"classes": ["a"], "scale": "bright"}', "model card"),
        ('{"classes": ["a"], "bands": [1, 2], "in_channels": 3}', "2 band indices"),
        ('{"classes": ["a"], "bands": 1, "std": [NaN]}', "'std' holds nan"),
        ('{"classes": ["a"], "bands": 1, "mean": [Infinity]}', "'mean' holds inf"),
    ],
)
def test_bad_card_json_raises_card_error(text, message):
    with pytest.raises(CardError, match=message):
        ModelCard.from_json(text)


def test_card_error_is_a_value_error():
    assert issubclass(CardError, ValueError)
