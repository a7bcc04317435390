"""Verify ssogate identity assertions with PyJWT, as an upstream would.

usage: verify_assertion.py REQUEST
  REQUEST       JSON: {"jwks_url": "https://127.0.0.1:8443/.well-known/ssogate/jwks.json",
                 "issuer": "https://127.0.0.1:8443",
                 "checks": [{"token": "eyJ...", "audience": "http://127.0.0.1:9000"}, ...]}
  SSOGATE_TEST_CA env: PEM bundle to trust for the JWKS fetch

Each token is verified the way the README tells an upstream to: its key is looked
up by `kid` in the gateway's JWKS (jwt.PyJWKClient, which fetches the set again for a
kid it does not know), then jwt.decode checks the ES256 signature, `aud`, `iss` and
`exp`, and requires every claim the gateway always sends. Nothing is replaced or
mocked. Prints one JSON line: a list, per token, of
  {"ok": true, "kid": "...", "claims": {...}}  or  {"ok": false, "error": "ExpiredSignatureError: ..."}
Exit 0 when every token was judged (whatever the verdicts), 2 on bad usage.
"""

import json
import os
import ssl
import sys

import jwt


def main():
    try:
        request = json.loads(sys.argv[1])
    except (IndexError, ValueError) as e:
        print(f"bad request: {e}", file=sys.stderr)
        return 2
    context = ssl.create_default_context(cafile=os.environ.get("SSOGATE_TEST_CA"))
    keys = jwt.PyJWKClient(request["jwks_url"], ssl_context=context)
    verdicts = []
    for check in request["checks"]:
        token = check["token"]
        try:
            key = keys.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["ES256"],
                audience=check["audience"],
                issuer=request["issuer"],
                options={"require": ["iss", "aud", "sub", "iat", "exp"]},
            )
            verdicts.append({"ok": True, "kid": key.key_id, "claims": claims})
        except jwt.PyJWTError as e:
            verdicts.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    print(json.dumps(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
