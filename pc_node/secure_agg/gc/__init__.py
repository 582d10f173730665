"""Two-party secure comparison by garbled circuits (transport-free; bytes in, bytes out).

The coordinator C garbles, the key holder R evaluates; R learns one bit per
instance (``reveal="verdict"``) or per criterion (``reveal="reasons"``), C learns
nothing. See docs/secure_comparison.md for what each party sees.

    spec = CircuitSpec([Test(bits=9), Test(bits=60, mode="modular")], reveal="verdict")
    offsets, g_in = integer_mask(9, T, n)              # C: add offsets to [x] (Paillier)
    r, g_in2 = modular_mask(t, T2, n)                  # C: add r to [x2] (BFV)
    e_in = integer_inputs(d, 9); e_in2 = modular_inputs(d2, t)   # R, after decrypting
    g = ComparisonGarbler(spec, [g_in, g_in2])
    e = ComparisonEvaluator(spec, [e_in, e_in2])
    m1 = e.start(); m2 = g.respond(m1); m3 = e.extend(m2); m4 = g.garble(m3)
    bits = e.evaluate(m4)                              # (n,) bool, or (n, K) for reasons

Modules: ``primitives`` (TCCR hash, PRG, KDF), ``ot`` (Chou–Orlandi base OT, IKNP
extension), ``garble`` (circuits, SIMD half-gates), ``masking`` (masks and
inputs), ``spec`` (criteria, the comparison circuit), ``compare`` (sessions,
message layouts).
"""
from .compare import ComparisonEvaluator, ComparisonGarbler, message_layout, message_size
from .garble import Circuit, CircuitBuilder
from .masking import (
    STAT_BITS,
    IntegerEvaluatorInput,
    IntegerGarblerInput,
    ModularEvaluatorInput,
    ModularGarblerInput,
    integer_garbler_input,
    integer_inputs,
    integer_mask,
    modular_garbler_input,
    modular_inputs,
    modular_mask,
)
from .ot import OtReceiver, OtSender
from .primitives import SessionStateError
from .spec import CircuitSpec, Test, build_circuit

__all__ = [
    "STAT_BITS",
    "Circuit",
    "CircuitBuilder",
    "CircuitSpec",
    "ComparisonEvaluator",
    "ComparisonGarbler",
    "IntegerEvaluatorInput",
    "IntegerGarblerInput",
    "ModularEvaluatorInput",
    "ModularGarblerInput",
    "OtReceiver",
    "OtSender",
    "SessionStateError",
    "Test",
    "build_circuit",
    "integer_garbler_input",
    "integer_inputs",
    "integer_mask",
    "message_layout",
    "message_size",
    "modular_garbler_input",
    "modular_inputs",
    "modular_mask",
]
