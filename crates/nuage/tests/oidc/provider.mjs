// A real, certified OpenID Connect provider for nuage's federation tests.
// Usage: node provider.mjs <port> <client_secret>
// Prints "ready <issuer>" when listening on 127.0.0.1.
import Provider from 'oidc-provider';

const [port, secret] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

// The company directory: login name -> groups.
const directory = {
  alice: ['acme-admins', 'staff'],
  bob: ['staff'],
};

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'nuage',
    client_secret: secret,
    application_type: 'native',
    redirect_uris: ['http://127.0.0.1/callback'],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name'],
    groups: ['groups'],
  },
  conformIdTokenClaims: false,
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: `id-${id}`,
          email: `${id}@acme.example`,
          email_verified: true,
          preferred_username: id,
          name: id.toUpperCase(),
          groups: directory[id] ?? [],
        };
      },
    };
  },
  features: { devInteractions: { enabled: true } },
});

provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
