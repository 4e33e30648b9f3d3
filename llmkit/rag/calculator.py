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

from llmkit.errors import LLMKitError

MAX_EXPRESSION_CHARS = 500
MAX_DEPTH = 50  # nested operations
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
    return format_number(_evaluate(tree.body, 0))


def format_number(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))  # 10 / 2 -> "5", as a person would write it
    return format(value, ".15g")


def _digits(value: int) -> int:
    return len(str(abs(value))) if abs(value) < 10 ** 50 else int(abs(value).bit_length() * math.log10(2)) + 1


def _check_size(value):
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is too large (or undefined) for a floating-point number")
    if isinstance(value, int) and _digits(value) > MAX_DIGITS:
        raise CalculatorError(f"the result has more than {MAX_DIGITS} digits; the calculator refuses numbers that large")
    return value


def _evaluate(node: ast.AST, depth: int):
    if depth > MAX_DEPTH:
        raise CalculatorError(f"the expression nests more than {MAX_DEPTH} operations")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"{node.value!r} is not a number; the calculator takes numbers only")
        return _check_size(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_evaluate(node.operand, depth + 1))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _evaluate(node.left, depth + 1), _evaluate(node.right, depth + 1)
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
            raise CalculatorError(f"the exponent {format_number(right)} is larger than {MAX_EXPONENT}; "
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
    return result
