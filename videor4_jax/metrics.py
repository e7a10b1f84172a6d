"""Answer metrics, each `fn(prediction: str, golds: list[str]) -> float` (names stable).

accuracy:   M4-ViteVQA / ST-VQA accuracy: 1 if the EvalAI-normalized prediction equals a normalized gold answer.
anls:       Average Normalized Levenshtein Similarity: max over golds of 1 - lev(p, g) / max(|p|, |g|) on lowercased,
            stripped strings, set to 0 below the threshold 0.5 (Biten et al. 2019; M4-ViteVQA evaluator).
exact_match, f1: SQuAD-style normalization (lowercase, no punctuation, no articles a/an/the, single spaces);
            F1 over the bag of tokens (slide QA).
multiple_choice_accuracy: the option letter extracted from free text ("(B)", "B.", "Answer: B", ...) equals gold.
"""
from __future__ import annotations

import collections
import re
import string

# The EvalAI VQA answer processor, as used by the M4-ViteVQA evaluator (which also drops "in" and "at").
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've"}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the", "in", "at"}
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
  out = text
  for p in _PUNCT:
    if (p + " " in text or " " + p in text) or re.search(_COMMA_STRIP, text) is not None:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD_STRIP.sub("", out)


def _process_digits_articles(text: str) -> str:
  words = []
  for w in text.lower().split():
    w = _NUMBERS.get(w, w)
    if w not in _ARTICLES:
      words.append(_CONTRACTIONS.get(w, w))
  return " ".join(words)


def normalize_evalai(answer: str) -> str:
  """EvalAI answer processing: newlines/tabs to spaces, "'s" split, punctuation, number words, articles."""
  a = answer.replace("\n", " ").replace("\t", " ").strip().lower()
  a = a.replace(",", "").replace("?", "").replace("'s", " 's")
  return _process_digits_articles(_process_punctuation(a))


def accuracy(prediction: str, golds: list[str]) -> float:
  p = normalize_evalai(prediction)
  return float(any(p == normalize_evalai(g) for g in golds))


def levenshtein(a: str, b: str) -> int:
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


def anls(prediction: str, golds: list[str], threshold: float = 0.5) -> float:
  p = prediction.strip().lower()
  best = 0.0
  for g in golds:
    g = g.strip().lower()
    n = max(len(p), len(g))
    s = 1.0 if n == 0 else 1.0 - levenshtein(p, g) / n
    best = max(best, s if s >= threshold else 0.0)
  return best


def _squad_normalize(s: str) -> str:
  s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def exact_match(prediction: str, golds: list[str]) -> float:
  return float(any(_squad_normalize(prediction) == _squad_normalize(g) for g in golds))


def f1(prediction: str, golds: list[str]) -> float:
  def one(p, g):
    pt, gt = _squad_normalize(p).split(), _squad_normalize(g).split()
    if not pt or not gt:
      return float(pt == gt)
    common = sum((collections.Counter(pt) & collections.Counter(gt)).values())
    if common == 0:
      return 0.0
    prec, rec = common / len(pt), common / len(gt)
    return 2 * prec * rec / (prec + rec)
  return max((one(prediction, g) for g in golds), default=0.0)


_OPTION = re.compile(r"answer\s*(?:is)?\s*[:：]?\s*\(?([A-J])(?:\)|\.|:|\s|$)"   # "Answer: B", "answer is (B)"
                     r"|\(([A-J])\)"                                               # "(B)" anywhere
                     r"|^\s*([A-J])(?:[).:]|$)",                                     # "B." / "B)" / "B" alone
                     re.IGNORECASE | re.MULTILINE)


def extract_option(text: str) -> str | None:
  m = _OPTION.search(text.strip())
  return next(g for g in m.groups() if g).upper() if m else None


def multiple_choice_accuracy(prediction: str, golds: list[str]) -> float:
  opt = extract_option(prediction)
  return float(opt is not None and any(opt == (extract_option(g) or g.strip().upper()) for g in golds))


METRICS = {"accuracy": accuracy, "anls": anls, "exact_match": exact_match, "f1": f1,
           "multiple_choice_accuracy": multiple_choice_accuracy}
