import pytest

from streams.catalog.fraud import FraudLabel, Transaction
from streams.schemas import InvalidRecord, parse

GOOD = b'{"event_id":"e1","card_id":"c1","merchant_id":"m1","amount":12.5,"ts":1700000000.5}'


def test_parses_a_good_transaction_and_accepts_integers_for_floats():
    t = parse(Transaction, GOOD)
    assert (t.card_id, t.amount, t.currency) == ("c1", 12.5, "EUR")
    assert parse(Transaction, GOOD.replace(b"12.5", b"12")).amount == 12.0


@pytest.mark.parametrize("raw, field, words", [
    (b"not json", "$", "not valid JSON"),
    (b"[1, 2]", "$", "JSON object"),
    (GOOD.replace(b'"card_id":"c1",', b""), "card_id", "required"),
    (GOOD.replace(b"12.5", b'"12.5"'), "amount", "valid number"),
    (GOOD.replace(b"12.5", b"-3"), "amount", "greater than 0"),
    (GOOD.replace(b'"e1"', b'""'), "event_id", "at least 1"),
    (b"\xff\xfe", "$", "not valid JSON"),
])
def test_bad_input_names_the_field_and_the_reason(raw, field, words):
    with pytest.raises(InvalidRecord) as err:
        parse(Transaction, raw)
    assert field in err.value.errors
    assert words in err.value.errors[field]
    assert field in str(err.value)


def test_label_must_be_a_real_boolean():
    with pytest.raises(InvalidRecord) as err:
        parse(FraudLabel, b'{"event_id":"e1","is_fraud":"yes","ts":1.0}')
    assert list(err.value.errors) == ["is_fraud"]


def test_round_trip_through_json():
    t = parse(Transaction, GOOD)
    assert parse(Transaction, t.to_json()) == t
