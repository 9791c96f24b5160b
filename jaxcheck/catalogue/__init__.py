"""Catalogues of correct and deliberately broken derivatives, and the CLI's demos.

Imported by the CLI's `demo` command, the tests and the benchmarks; never by the checks.
`grad_cases`: losses and hand-written gradients; `rule_cases`: custom_vjp/custom_jvp rules;
`demos`: the `jaxcheck demo` programs; `real_cases`: issue 10's suites of real-code
derivatives (cancellation, exact zeros, mixed scales, lax ops at JAX's test points).
"""
