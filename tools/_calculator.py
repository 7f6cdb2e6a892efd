"""``calculator``: arithmetic on an expression a model wrote, evaluated by walking its syntax tree.

Nothing is handed to ``eval``: the text is parsed with ``ast.parse`` and only numbers, the arithmetic
operators, parentheses and a fixed table of math functions and constants are evaluated. Every other
construct (names, attributes, subscripts, calls to anything else, lambdas, comprehensions, strings) is
refused with an error that names it. Limits keep a hostile expression from eating the CPU or memory: the
length of the text, the nesting depth, and the size of any integer (a power is checked before it is
computed, so ``9**9**9`` is refused at once).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

from agentflow import tool
from agentflow.errors import NonRetryableError

__all__ = ["CalculatorError", "calculator"]

MAX_EXPRESSION_LENGTH = 1000
MAX_DEPTH = 100
MAX_INTEGER_DIGITS = 1000

Number = int | float

_LIMIT = 10**MAX_INTEGER_DIGITS
_ROUND_DIGITS = 400  # |ndigits| for round(): past this, rounding a float or an int changes nothing


class CalculatorError(NonRetryableError, ValueError):
    """The expression is refused or has no value (bad syntax, a forbidden construct, division by zero...)."""


def _min(*args: Number) -> Number:
    return min(args)


def _max(*args: Number) -> Number:
    return max(args)


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > _ROUND_DIGITS:
        raise CalculatorError(f"round(x, n) needs n to be a whole number between -{_ROUND_DIGITS} and {_ROUND_DIGITS}")
    return round(x, ndigits)


# name -> (function, least arguments, most arguments or None for any number)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int | None]] = {
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 2),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "min": (_min, 1, None),
    "max": (_max, 1, None),
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: _power(a, b),
}
_REFUSED_OPERATORS: dict[type[ast.AST], str] = {
    ast.BitXor: "'^' is bitwise xor, not a power; write 2**3 for powers",
    ast.BitAnd: "'&' (bitwise and) is not supported",
    ast.BitOr: "'|' (bitwise or) is not supported",
    ast.LShift: "'<<' (shift) is not supported",
    ast.RShift: "'>>' (shift) is not supported",
    ast.MatMult: "'@' (matrix product) is not supported",
    ast.Invert: "'~' (bitwise not) is not supported",
    ast.Not: "'not' is not supported",
}
_CONSTRUCTS: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.Compare: "comparisons",
    ast.BoolOp: "'and' / 'or'",
    ast.IfExp: "conditional expressions",
    ast.NamedExpr: "assignments",
    ast.Tuple: "tuples",
    ast.List: "lists",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.JoinedStr: "f-strings",
    ast.Starred: "'*' unpacking",
}
_KNOWN = f"functions: {', '.join(_FUNCTIONS)}; constants: {', '.join(_CONSTANTS)}"


@tool
def calculator(expression: str) -> Number:
    """Evaluate an arithmetic expression and return the number, e.g. "2 * (3 + 4) ** 2 / sqrt(16)".

    Supported: numbers, + - * / // % ** (power), unary + and -, parentheses, the functions sqrt, log
    (log(x) is natural, log(x, base)), exp, sin, cos, tan (radians), abs, round, floor, ceil, min, max, and the
    constants pi, e, tau. Nothing else: no variables, no strings, no comparisons.
    """
    text = expression.strip()
    if not text:
        raise CalculatorError("the expression is empty; write one like 2 * (3 + 4)")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise CalculatorError(f"the expression is {len(text)} characters long; the limit is {MAX_EXPRESSION_LENGTH}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"{text!r} is not a valid expression ({exc.msg})") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        raise CalculatorError(f"the expression cannot be parsed ({type(exc).__name__})") from None
    try:
        value = _evaluate(tree.body, 0)
    except ZeroDivisionError:
        raise CalculatorError(f"{text!r} divides by zero") from None
    except OverflowError:
        raise CalculatorError(f"{text!r} overflows: a value is too large to compute") from None
    return value


def _evaluate(node: ast.AST, depth: int) -> Number:
    if depth > MAX_DEPTH:
        raise CalculatorError(f"the expression is nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, ast.Constant):
        return _checked(_literal(node.value))
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            return _checked(-_evaluate(node.operand, depth + 1))
        if isinstance(node.op, ast.UAdd):
            return _checked(+_evaluate(node.operand, depth + 1))
        raise CalculatorError(_REFUSED_OPERATORS.get(type(node.op), f"the operator {type(node.op).__name__}"))
    if isinstance(node, ast.BinOp):
        return _chain(node, depth)
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if node.id in _FUNCTIONS:
            raise CalculatorError(f"{node.id} is a function; call it, like {node.id}(2)")
        raise CalculatorError(f"unknown name {node.id!r}; there are no variables. Known {_KNOWN}")
    if isinstance(node, ast.Call):
        return _checked(_call(node, depth))
    construct = _CONSTRUCTS.get(type(node), f"{type(node).__name__} expressions")
    raise CalculatorError(f"not allowed in a calculator expression: {construct}. Use numbers, operators and {_KNOWN}")


def _chain(node: ast.BinOp, depth: int) -> Number:
    """A chain of left-associative operations, ``1 + 2 - 3 * 4 + ...``: the parser nests it one level per
    operator (``((1 + 2) - 3 * 4) + ...``), but it is flat text, so it is evaluated in a loop, its terms
    one level deeper than the chain, and a sum of a few hundred terms is not "nested too deep"."""
    links: list[ast.BinOp] = [node]
    while isinstance(links[-1].left, ast.BinOp):
        links.append(links[-1].left)
    value = _evaluate(links[-1].left, depth + 1)
    for link in reversed(links):
        operation = _BINARY.get(type(link.op))
        if operation is None:
            refused = _REFUSED_OPERATORS.get(type(link.op), f"the operator {type(link.op).__name__} is not supported")
            raise CalculatorError(refused)
        value = _checked(operation(value, _evaluate(link.right, depth + 1)))
    return value


def _literal(value: object) -> Number:
    # bool is an int subclass: refuse it with the other non-numbers.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, complex):
        raise CalculatorError(f"the complex number {value!r} is not allowed; only real numbers")
    raise CalculatorError(f"{value!r} is not a number; only real numbers are allowed")


def _call(node: ast.Call, depth: int) -> Number:
    if not isinstance(node.func, ast.Name):
        raise CalculatorError(f"only the calculator's functions can be called ({_KNOWN})")
    name = node.func.id
    if name not in _FUNCTIONS:
        raise CalculatorError(f"{name!r} is not an available function; the {_KNOWN}")
    if node.keywords:
        raise CalculatorError(f"{name}() takes no keyword arguments")
    function, least, most = _FUNCTIONS[name]
    if len(node.args) < least or (most is not None and len(node.args) > most):
        wanted = f"{least}" if least == most else f"{least} or more" if most is None else f"{least} to {most}"
        raise CalculatorError(f"{name}() takes {wanted} argument(s), not {len(node.args)}")
    args = [_evaluate(arg, depth + 1) for arg in node.args]
    try:
        return function(*args)
    except CalculatorError:
        raise
    except (ValueError, TypeError):
        shown = ", ".join(repr(a) for a in args)
        raise CalculatorError(f"{name}({shown}) is undefined (outside the function's domain)") from None


def _power(base: Number, exponent: Number) -> Number:
    # Integer powers grow without bound: check the size of the result before computing it.
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0:
        too_big = exponent > 4 * MAX_INTEGER_DIGITS or exponent * math.log10(abs(base)) > MAX_INTEGER_DIGITS
        if too_big:
            raise CalculatorError(f"{base} to the power {exponent} has more than {MAX_INTEGER_DIGITS} digits; refused")
    result = base**exponent
    if isinstance(result, complex):
        raise CalculatorError(f"{base} to the power {exponent} is a complex number, not a real number")
    return result


def _checked(value: Number) -> Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("a value overflows (too large for a floating-point number)")
    if isinstance(value, int) and abs(value) >= _LIMIT:
        raise CalculatorError(f"a value has more than {MAX_INTEGER_DIGITS} digits; refused")
    return value
