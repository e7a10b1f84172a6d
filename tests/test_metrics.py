"""Metrics on hand-computed cases and edge cases."""
import pytest

from videor4_jax.metrics import accuracy, anls, exact_match, extract_option, f1, multiple_choice_accuracy


@pytest.mark.parametrize("pred,golds,want", [
    ("The Eiffel Tower", ["eiffel tower"], 1.0),          # article dropped, case
    ("in the park", ["park"], 1.0),                       # M4-ViteVQA also drops "in" and "at"
    ("two", ["2"], 1.0),                                  # number words
    ("3.5", ["3.5"], 1.0), ("3.5", ["35"], 0.0),          # periods kept inside numbers
    ("yes.", ["yes"], 1.0),                               # trailing period stripped
    ("dont", ["don't"], 1.0),                             # contraction fix
    ("1,000", ["1000"], 1.0),                             # comma
    ("coca-cola", ["coca cola"], 1.0),                    # hyphen -> space
    ("", ["abc"], 0.0), ("", [""], 1.0),
    ("café", ["CAFÉ"], 1.0),                              # unicode lowercase
    ("niko", ["mike", "Niko"], 1.0),                      # several golds
])
def test_accuracy(pred, golds, want):
  assert accuracy(pred, golds) == want


def test_anls_hand_computed():
  assert anls("abcd", ["abce"]) == pytest.approx(0.75)          # lev 1 / 4
  assert anls("abc", ["xyz"]) == 0.0                            # similarity 0 < 0.5
  assert anls("ab", ["abcd"]) == pytest.approx(0.5)             # exactly at the threshold: kept
  assert anls("ab", ["abcde"]) == 0.0                           # 0.4 < 0.5
  assert anls(" ABCD ", ["x", "abcd"]) == 1.0                   # max over golds, lower + strip
  assert anls("", [""]) == 1.0 and anls("", ["a"]) == 0.0
  assert anls("日本語", ["日本"]) == pytest.approx(2 / 3)


def test_exact_match_and_f1():
  assert exact_match("The cat!", ["cat"]) == 1.0
  assert f1("red big cat", ["big cat"]) == pytest.approx(0.8)   # p = 2/3, r = 1
  assert f1("", ["x"]) == 0.0 and f1("", [""]) == 1.0
  assert f1("a b", ["c", "b a"]) == 1.0


@pytest.mark.parametrize("text,opt", [("(B) because", "B"), ("B. the second", "B"), ("Answer: c", "C"),
                                      ("The answer is (D).", "D"), ("I think so", None)])
def test_option_extraction(text, opt):
  assert extract_option(text) == opt


def test_multiple_choice_accuracy():
  assert multiple_choice_accuracy("Answer: (A)", ["A"]) == 1.0
  assert multiple_choice_accuracy("(C)", ["A"]) == 0.0
  assert multiple_choice_accuracy("no idea", ["A"]) == 0.0
