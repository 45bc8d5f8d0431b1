"""Who is asking: the principal behind a browser session or a bearer credential.

- `principal`: request -> principal (the session middlewares and the principal helpers).
- `routes`: the browser sign-in routes (`/login`, `/auth/callback`, `/logout`, ...).
- `bearer`: `Authorization: Bearer` credentials -> principal, and `AuthRuntime`, the auth
  state of one app (`app.state.auth`; there is no process-wide one).
- `idp`: the identity provider: discovery, JWKS fetch and cache, access-token verification.
- `sessions`: server-side sign-in sessions (the cookie holds only a random secret).
- `apikeys`: API keys (`tlm_...`): creation, hashing, verification, revocation.
- `group_mapping`: identity-provider groups -> tenant roles.
- `demo_idp`: the built-in identity provider for development mode.
- `token_kinds`: telling an ID token from an access token (only access tokens open the API).
- `cross_site`: CORS for configured origins only, no cross-origin state changes.
The order of their middlewares in the app is core/server.py's `middleware_stack`.

This `__init__` only documents: import the submodules themselves.
"""
