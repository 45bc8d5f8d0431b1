"""Who is asking: the principal behind a browser session or a bearer credential.

- `principal`: request -> principal (the session middleware and the principal helpers).
- `routes`: the browser sign-in routes (`/login`, `/auth/callback`, `/logout`, ...).
- `bearer`: the IdP outside the browser flow, and `Authorization: Bearer` credentials.
- `sessions`: server-side sign-in sessions (the cookie holds only a random secret).
- `apikeys`: API keys (`tlm_...`): creation, hashing, verification, revocation.
- `group_mapping`: identity-provider groups -> tenant roles.
- `demo_idp`: the built-in identity provider for development mode.
- `token_kinds`: telling an ID token from an access token (only access tokens open the API).
- `cross_site`: CORS for configured origins only, no cross-origin state changes.

This `__init__` only documents: import the submodules themselves.
"""
