"""A calculator a model can call: arithmetic parsed with Python's `ast`, evaluated node by node, never `eval`.

Allowed: integer and decimal numbers, + - * / // % **, unary + and -, parentheses. Everything else —
names, calls, attributes, subscripts, strings, comparisons, `^` — is refused with a message saying
what was found (a model reads it and can try again). Sizes are bounded before any work is done, so an
expression cannot spend the machine's memory or time: the text's length, the nesting depth, an
exponent, and the digits of any integer result (estimated before multiplying or raising to a power:
`9**9**9` is refused at once, not computed).

Tokenizers cut numbers into pieces ("327" may be one token, "3271" two), which makes arithmetic hard
for a language model; a calculator call makes it exact (Schick et al. 2023, Toolformer; nanochat's
assistant has one too).
"""

from __future__ import annotations

import ast
import math
import operator
import sys

from llmkit.errors import LLMKitError

MAX_EXPRESSION_CHARS = 500
MAX_DEPTH = 50  # nested operations (a chain like 1 + 2 + 3 - 4 is one level, however long)
MAX_EXPONENT = 10_000
MAX_DIGITS = 1_000  # of an integer result (or any integer on the way)

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
NOT_ARITHMETIC = {ast.Name: "a name", ast.Call: "a function call", ast.Attribute: "an attribute",
                  ast.Subscript: "a subscript", ast.Compare: "a comparison", ast.BoolOp: "a boolean operation",
                  ast.Lambda: "a lambda", ast.Tuple: "a tuple (no commas inside numbers: write 1234, not 1,234)",
                  ast.List: "a list", ast.Dict: "a dict", ast.Set: "a set", ast.IfExp: "a conditional",
                  ast.JoinedStr: "a string"}


class CalculatorError(LLMKitError):
    """An expression the calculator does not evaluate: not arithmetic, too large, or undefined."""


def calculate(expression: str) -> str:
    """The value of an arithmetic expression, as text: `calculate("327 * 48 + 5")` -> "15701"."""
    if not isinstance(expression, str):
        raise CalculatorError(f"the expression must be text, not {type(expression).__name__}")
    text = expression.strip()
    if not text:
        raise CalculatorError("the expression is empty; give arithmetic such as 12 * (3 + 4)")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression has {len(text)} characters; at most {MAX_EXPRESSION_CHARS}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"{text!r} is not an arithmetic expression ({e.msg}); use numbers, "
                              "+ - * / // % ** and parentheses") from None
    except (RecursionError, MemoryError, ValueError):
        raise CalculatorError(f"{text[:40]!r}...: too deeply nested") from None
    return format_number(_evaluate(tree.body, 0, text))


def format_number(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))  # 10 / 2 -> "5", as a person would write it
    return format(value, ".15g")


def _short(value) -> str:
    """A number for a message: a long one cut to its first digits and its length."""
    text = format_number(value)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text.lstrip('-'))} digits)"


# Operators of one precedence level: a chain of them (1 + 2 - 3 + ...) nests only in the parser's tree.
LEVEL = {ast.Add: 1, ast.Sub: 1, ast.Mult: 2, ast.Div: 2, ast.FloorDiv: 2, ast.Mod: 2, ast.Pow: 3}


def _chained(parent: ast.BinOp, child: ast.AST, right: bool) -> bool:
    """Whether `child` continues `parent`'s chain of operators of its level: the left operand of a
    left-associative chain (+ - and * / // %), the right one of a power tower (2 ** 3 ** 4)."""
    if not isinstance(child, ast.BinOp) or type(child.op) not in LEVEL:
        return False
    level = LEVEL[type(parent.op)]
    return LEVEL[type(child.op)] == level and right == (level == 3)


def _digits(value: int) -> int:
    return len(str(abs(value))) if abs(value) < 10 ** 50 else int(abs(value).bit_length() * math.log10(2)) + 1


def _check_size(value):
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is too large (or undefined) for a floating-point number")
    if isinstance(value, float) and 0 < abs(value) < sys.float_info.min:  # subnormal: digits already lost
        raise CalculatorError(f"the result {value:.3g} is too small for a floating-point number (it underflows; "
                              "the smallest with full precision is about 2.2e-308)")
    if isinstance(value, int) and _digits(value) > MAX_DIGITS:
        raise CalculatorError(f"the result has more than {MAX_DIGITS} digits; the calculator refuses numbers that large")
    return value


def _evaluate(node: ast.AST, depth: int, text: str = ""):
    if depth > MAX_DEPTH:
        raise CalculatorError(f"the expression nests more than {MAX_DEPTH} operations inside one another; "
                              "simplify it or compute it in steps")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"{node.value!r} is not a number; the calculator takes numbers only")
        if node.value == 0 and isinstance(node.value, float):
            written = ast.get_source_segment(text, node) or ""
            if any(c in "123456789" for c in written.lower().split("e")[0]):
                raise CalculatorError(f"{written[:40]} is too small for a floating-point number (it underflows "
                                      "to 0; the smallest is about 1e-308)")
        return _check_size(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_evaluate(node.operand, depth + 1, text))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left = _evaluate(node.left, depth if _chained(node, node.left, False) else depth + 1, text)
        right = _evaluate(node.right, depth if _chained(node, node.right, True) else depth + 1, text)
        return _check_size(_binary(node.op, left, right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise CalculatorError("^ is not a power here; write ** for powers (2 ** 10)")
    what = next((name for kind, name in NOT_ARITHMETIC.items() if isinstance(node, kind)),
                f"a {type(node).__name__} expression")
    raise CalculatorError(f"{ast.unparse(node)[:60]!r} is {what}, not arithmetic; the calculator takes numbers, "
                          "+ - * / // % ** and parentheses")


def _binary(op: ast.operator, left, right):
    if isinstance(op, ast.Pow):
        if abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"the exponent {_short(right)} is larger than {MAX_EXPONENT}; "
                                  "the calculator refuses numbers that large")
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1 \
                and right * math.log10(abs(left)) > MAX_DIGITS:
            raise CalculatorError(f"the result has more than {MAX_DIGITS} digits; the calculator refuses numbers that large")
    if isinstance(op, ast.Mult) and isinstance(left, int) and isinstance(right, int) and left and right \
            and _digits(left) + _digits(right) > MAX_DIGITS + 1:
        raise CalculatorError(f"the result has more than {MAX_DIGITS} digits; the calculator refuses numbers that large")
    try:
        result = BINARY[type(op)](left, right)
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("the result is too large for a floating-point number") from None
    except (ValueError, TypeError) as e:  # e.g. a negative number to a fractional power gives a complex
        raise CalculatorError(f"undefined: {e}") from None
    if isinstance(result, complex):
        raise CalculatorError("undefined: a negative number to a fractional power is not a real number")
    if isinstance(result, float) and result == 0 and left != 0 and (right != 0 or isinstance(op, ast.Pow)) \
            and isinstance(op, (ast.Mult, ast.Div, ast.Pow)):
        raise CalculatorError("the result is too small for a floating-point number (it underflows to 0; the "
                              "smallest is about 1e-308); the calculator cannot give it")
    return result
