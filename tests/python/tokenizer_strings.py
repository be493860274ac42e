"""Deterministic test strings for the tokenizer parity checks: ASCII prose,
CJK, emoji and ZWJ sequences, combining marks, runs of spaces / tabs /
newlines, digits, and text around special tokens."""
import random

WORDS = ("the a shape circle square triangle star diamond red green blue yellow purple orange white black gray "
         "one two three four five left right top bottom center middle upper lower background image picture "
         "What How many Is there It is colour The quick brown fox jumps over lazy dog Human Assistant USER "
         "ASSISTANT ### tokenizer byte fallback don't can't it's e.g. x=1; f(x) {return} [a] <b> http://x.y/z").split()
CJK = "这是一个好奇的人类和人工智能助手之间对话假设你扮演角色仔细阅读所有图像并问题做出信息丰富有帮助详细礼貌回答图片中红色圆形蓝色正方形今天天气很好我们去公园散步機器學習日本語のテキストです한국어텍스트"
EMOJI = ["😀", "🎉", "👍", "👍🏽", "🇨🇳", "🇺🇸", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "❤️", "🧑🏿\u200d💻", "✅", "🔺", "🟦"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "o\u0302\u0323", "Z\u0335\u0336", "\u0915\u094d\u0937", "\u0e01\u0e34"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", " \n ", "\r\n", "\u3000", "\u00a0", "    "]
OTHER = ["ÿ", "ß", "Ω", "€", "—", "…", "«»", "\u200b", "\ufeff", "\U0001d400", "\x7f", "~", "\\", "\"", "ℝ", "ﬁ"]


def piece(rng, specials):
    kind = rng.random()
    if kind < 0.35:
        return rng.choice(WORDS)
    if kind < 0.47:
        return "".join(rng.choice(CJK) for _ in range(rng.randint(1, 8)))
    if kind < 0.55:
        return rng.choice(EMOJI)
    if kind < 0.60:
        return rng.choice(COMBINING)
    if kind < 0.72:
        return rng.choice(SPACES)
    if kind < 0.82:
        return str(rng.randint(0, 10 ** rng.randint(1, 12)))
    if kind < 0.90:
        return rng.choice(OTHER)
    if kind < 0.97 and specials:
        return rng.choice(specials)
    return chr(rng.randint(0x20, 0x2FFF))


def make_strings(count, specials, seed=1234):
    rng = random.Random(seed)
    out = ["", " ", "  ", "\n", "a", "ab", "12345", "<image>", "<image><image>", " <image> ", "###", "### Human:"]
    while len(out) < count:
        n = rng.randint(1, 24)
        parts = [piece(rng, specials) for _ in range(n)]
        joiner = rng.choice(["", " ", " ", "", "\n"])
        s = joiner.join(parts)
        if "\ud800" <= s <= "\udfff":
            continue
        out.append(s)
    return out[:count]
