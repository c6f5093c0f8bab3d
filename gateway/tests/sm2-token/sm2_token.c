/*
 * A MOCK PKCS#11 module, for the tests only: a token that generates and uses SM2 keys
 * through vendor-defined mechanisms, as Chinese GM/T 0018 HSMs with a PKCS#11 wrapper do.
 *
 * Why a mock: no PKCS#11 module with SM2 installs on this project's machines (Debian's
 * SoftHSM2 and tpm2-pkcs11 have none; no vendor library is packaged), and the gateway's
 * in-token SM2 path must still run against something that speaks PKCS#11. Everything
 * else in the suite runs on real tokens. The mock holds its keys in a plain file: it is
 * not custody, it stands in for a device's key store.
 *
 * What it implements is what a PKCS#11 client of a signing token calls: slots, token and
 * mechanism info, sessions, login, objects (find, read, set, create data objects,
 * destroy), key-pair generation and signing. The numbers are those of the gateway's
 * built-in cn-generic-sm2 profile:
 *   CKM_VENDOR_DEFINED + 0x8000  SM2 signature over a caller-made e (32 bytes)
 *   CKM_VENDOR_DEFINED + 0x8001  SM2 key-pair generation
 *   CKM_VENDOR_DEFINED + 0x8100  SM2 with SM3: Z from the default ID, or the mechanism
 *                                parameter as the ID
 * plus CKM_EC_KEY_PAIR_GEN / CKM_ECDSA on P-256. Signatures are r||s (64 bytes), as
 * PKCS#11 returns ECDSA. The cryptography is OpenSSL's (libcrypto), not the gateway's.
 *
 * Configuration: BSN_SM2_TOKEN_DIR names a directory holding `token.conf` (lines
 * `label=...` and `pin=...`); token objects are kept in `objects` there.
 */
#include <p11-kit/pkcs11.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MOCK_CKM_SM2 (CKM_VENDOR_DEFINED + 0x8000UL)
#define MOCK_CKM_SM2_KEY_PAIR_GEN (CKM_VENDOR_DEFINED + 0x8001UL)
#define MOCK_CKM_SM2_SM3 (CKM_VENDOR_DEFINED + 0x8100UL)
#define MOCK_CKK_SM2 (CKK_VENDOR_DEFINED + 0x8000UL)
#define SLOT 1
#define MAX_SESSIONS 4096

static const unsigned char OID_P256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const unsigned char OID_SM2[] = {0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d};

typedef struct {
  CK_ATTRIBUTE_TYPE type;
  unsigned char *val;
  CK_ULONG len;
} attr_t;

typedef struct obj {
  CK_OBJECT_HANDLE h;
  CK_SESSION_HANDLE session; /* 0 for a token object */
  size_t n;
  attr_t *a;
  struct obj *next;
} obj_t;

typedef struct {
  int open;
  CK_FLAGS flags;
  CK_OBJECT_HANDLE *found;
  CK_ULONG nfound, cursor;
  int finding;
  int signing;
  CK_MECHANISM_TYPE mech;
  CK_OBJECT_HANDLE key;
  unsigned char id[256];
  size_t idlen;
} sess_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int initialized;
static int logged_in;
static char label[33], pin[128], store[4096];
static obj_t *objects;
static CK_OBJECT_HANDLE next_handle = 1;
static sess_t sessions[MAX_SESSIONS];

/* === attributes and objects === */

static attr_t *find_attr(obj_t *o, CK_ATTRIBUTE_TYPE t) {
  for (size_t i = 0; i < o->n; i++)
    if (o->a[i].type == t) return &o->a[i];
  return NULL;
}

static int set_attr(obj_t *o, CK_ATTRIBUTE_TYPE t, const void *v, CK_ULONG len) {
  attr_t *a = find_attr(o, t);
  if (!a) {
    attr_t *grown = realloc(o->a, (o->n + 1) * sizeof *grown);
    if (!grown) return 0;
    o->a = grown;
    a = &o->a[o->n++];
    a->type = t;
    a->val = NULL;
  }
  unsigned char *copy = malloc(len ? len : 1);
  if (!copy) return 0;
  if (len) memcpy(copy, v, len);
  free(a->val);
  a->val = copy;
  a->len = len;
  return 1;
}

static int set_ulong(obj_t *o, CK_ATTRIBUTE_TYPE t, CK_ULONG v) { return set_attr(o, t, &v, sizeof v); }
static int set_bool(obj_t *o, CK_ATTRIBUTE_TYPE t, CK_BBOOL v) { return set_attr(o, t, &v, sizeof v); }

static int get_bool(obj_t *o, CK_ATTRIBUTE_TYPE t, int dflt) {
  attr_t *a = find_attr(o, t);
  return a && a->len == sizeof(CK_BBOOL) ? *(CK_BBOOL *)a->val != 0 : dflt;
}

static CK_ULONG get_ulong(obj_t *o, CK_ATTRIBUTE_TYPE t, CK_ULONG dflt) {
  attr_t *a = find_attr(o, t);
  return a && a->len == sizeof(CK_ULONG) ? *(CK_ULONG *)a->val : dflt;
}

static void free_obj(obj_t *o) {
  for (size_t i = 0; i < o->n; i++) {
    OPENSSL_cleanse(o->a[i].val, o->a[i].len);
    free(o->a[i].val);
  }
  free(o->a);
  free(o);
}

static obj_t *new_obj(CK_SESSION_HANDLE session) {
  obj_t *o = calloc(1, sizeof *o);
  if (!o) return NULL;
  o->h = next_handle++;
  o->session = session;
  return o;
}

static void link_obj(obj_t *o) {
  o->next = objects;
  objects = o;
}

static obj_t *lookup(CK_OBJECT_HANDLE h) {
  for (obj_t *o = objects; o; o = o->next)
    if (o->h == h) return o;
  return NULL;
}

/* A private object is out of sight until the user logs in. */
static int visible(obj_t *o) { return logged_in || !get_bool(o, CKA_PRIVATE, 0); }

/* === the store: token objects, one per line, attributes as type:hex === */

static int save(void) {
  char path[4200], tmp[4200];
  snprintf(path, sizeof path, "%s/objects", store);
  snprintf(tmp, sizeof tmp, "%s/objects.tmp", store);
  FILE *f = fopen(tmp, "w");
  if (!f) return 0;
  for (obj_t *o = objects; o; o = o->next) {
    if (o->session) continue;
    fprintf(f, "%zu", o->n);
    for (size_t i = 0; i < o->n; i++) {
      fprintf(f, " %lx:", o->a[i].type);
      for (CK_ULONG j = 0; j < o->a[i].len; j++) fprintf(f, "%02x", o->a[i].val[j]);
      if (!o->a[i].len) fputc('-', f);
    }
    fputc('\n', f);
  }
  int ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
  ok = fclose(f) == 0 && ok;
  return ok && rename(tmp, path) == 0;
}

static int load(void) {
  char path[4200];
  snprintf(path, sizeof path, "%s/objects", store);
  FILE *f = fopen(path, "r");
  if (!f) return 1; /* a new token */
  size_t n;
  while (fscanf(f, "%zu", &n) == 1) {
    obj_t *o = new_obj(0);
    if (!o) return 0;
    for (size_t i = 0; i < n; i++) {
      unsigned long type;
      char hexbuf[8192];
      if (fscanf(f, " %lx:%8191s", &type, hexbuf) != 2) return 0;
      size_t len = hexbuf[0] == '-' ? 0 : strlen(hexbuf) / 2;
      unsigned char *v = malloc(len ? len : 1);
      for (size_t j = 0; j < len; j++) sscanf(hexbuf + 2 * j, "%2hhx", &v[j]);
      set_attr(o, type, v, len);
      free(v);
    }
    link_obj(o);
  }
  fclose(f);
  return 1;
}

static int read_conf(void) {
  const char *dir = getenv("BSN_SM2_TOKEN_DIR");
  if (!dir || strlen(dir) >= sizeof store) return 0;
  strcpy(store, dir);
  char path[4200], line[256];
  snprintf(path, sizeof path, "%s/token.conf", store);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  label[0] = pin[0] = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = 0;
    if (!strncmp(line, "label=", 6)) snprintf(label, sizeof label, "%.32s", line + 6);
    if (!strncmp(line, "pin=", 4)) snprintf(pin, sizeof pin, "%.127s", line + 4);
  }
  fclose(f);
  return label[0] && pin[0];
}

static void pad(unsigned char *dst, size_t n, const char *src) {
  memset(dst, ' ', n);
  memcpy(dst, src, strlen(src) < n ? strlen(src) : n);
}

/* === keys: OpenSSL does the arithmetic === */

static int is_sm2_key(obj_t *o) { return get_ulong(o, CKA_KEY_TYPE, 0) == MOCK_CKK_SM2; }

static EVP_PKEY *pkey_of(obj_t *key) {
  attr_t *d = find_attr(key, CKA_VALUE), *pt = find_attr(key, CKA_EC_POINT);
  if (!d || !pt || pt->len != 67) return NULL;
  const char *type = is_sm2_key(key) ? "SM2" : "EC";
  BIGNUM *bn = BN_bin2bn(d->val, (int)d->len, NULL);
  OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
  OSSL_PARAM_BLD_push_utf8_string(b, OSSL_PKEY_PARAM_GROUP_NAME, is_sm2_key(key) ? "SM2" : "prime256v1", 0);
  OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_PRIV_KEY, bn);
  OSSL_PARAM_BLD_push_octet_string(b, OSSL_PKEY_PARAM_PUB_KEY, pt->val + 2, 65);
  OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(b);
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
  EVP_PKEY *pkey = NULL;
  if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 || EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_KEYPAIR, params) <= 0)
    pkey = NULL;
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(b);
  BN_clear_free(bn);
  return pkey;
}

static int der_to_raw(const unsigned char *der, size_t len, unsigned char out[64]) {
  ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &der, (long)len);
  if (!sig) return 0;
  const BIGNUM *r, *s;
  ECDSA_SIG_get0(sig, &r, &s);
  int ok = BN_bn2binpad(r, out, 32) == 32 && BN_bn2binpad(s, out + 32, 32) == 32;
  ECDSA_SIG_free(sig);
  return ok;
}

static CK_RV sign_with(sess_t *s, obj_t *key, const unsigned char *data, CK_ULONG len, unsigned char out[64]) {
  EVP_PKEY *pkey = pkey_of(key);
  if (!pkey) return CKR_GENERAL_ERROR;
  unsigned char der[128];
  size_t derlen = sizeof der;
  int ok = 0;
  if (s->mech == MOCK_CKM_SM2_SM3) {
    const unsigned char *id = s->idlen ? s->id : (const unsigned char *)"1234567812345678";
    size_t idlen = s->idlen ? s->idlen : 16;
    OSSL_PARAM p[] = {OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_DIST_ID, (void *)id, idlen), OSSL_PARAM_END};
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    ok = m && EVP_DigestSignInit_ex(m, NULL, "SM3", NULL, NULL, pkey, p) > 0 &&
         EVP_DigestSign(m, der, &derlen, data, len) > 0;
    EVP_MD_CTX_free(m);
  } else {
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    ok = c && EVP_PKEY_sign_init(c) > 0 && EVP_PKEY_sign(c, der, &derlen, data, len) > 0;
    EVP_PKEY_CTX_free(c);
  }
  EVP_PKEY_free(pkey);
  return ok && der_to_raw(der, derlen, out) ? CKR_OK : CKR_FUNCTION_FAILED;
}

/* === general === */

#define ENTER()                                     \
  pthread_mutex_lock(&lock);                        \
  if (!initialized) {                               \
    pthread_mutex_unlock(&lock);                    \
    return CKR_CRYPTOKI_NOT_INITIALIZED;            \
  }
#define LEAVE(rv)                                   \
  do {                                              \
    CK_RV r_ = (rv);                                \
    pthread_mutex_unlock(&lock);                    \
    return r_;                                      \
  } while (0)

static sess_t *session_of(CK_SESSION_HANDLE h) {
  if (h < 1 || h > MAX_SESSIONS || !sessions[h - 1].open) return NULL;
  return &sessions[h - 1];
}

CK_RV C_Initialize(void *args) {
  (void)args;
  pthread_mutex_lock(&lock);
  if (initialized) LEAVE(CKR_CRYPTOKI_ALREADY_INITIALIZED);
  if (!read_conf() || !load()) LEAVE(CKR_GENERAL_ERROR);
  initialized = 1;
  logged_in = 0;
  LEAVE(CKR_OK);
}

CK_RV C_Finalize(void *reserved) {
  (void)reserved;
  ENTER();
  for (obj_t *o = objects, *next; o; o = next) {
    next = o->next;
    free_obj(o);
  }
  objects = NULL;
  for (int i = 0; i < MAX_SESSIONS; i++) {
    free(sessions[i].found);
    memset(&sessions[i], 0, sizeof sessions[i]);
  }
  initialized = 0;
  LEAVE(CKR_OK);
}

CK_RV C_GetInfo(CK_INFO_PTR info) {
  ENTER();
  memset(info, 0, sizeof *info);
  info->cryptokiVersion.major = 2;
  info->cryptokiVersion.minor = 40;
  pad(info->manufacturerID, 32, "bsn-gateway tests");
  pad(info->libraryDescription, 32, "MOCK SM2 token (tests only)");
  info->libraryVersion.major = 1;
  LEAVE(CKR_OK);
}

CK_RV C_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count) {
  (void)present;
  ENTER();
  if (list && *count < 1) {
    *count = 1;
    LEAVE(CKR_BUFFER_TOO_SMALL);
  }
  if (list) list[0] = SLOT;
  *count = 1;
  LEAVE(CKR_OK);
}

CK_RV C_GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info) {
  ENTER();
  if (slot != SLOT) LEAVE(CKR_SLOT_ID_INVALID);
  memset(info, 0, sizeof *info);
  pad(info->slotDescription, 64, "MOCK SM2 token slot");
  pad(info->manufacturerID, 32, "bsn-gateway tests");
  info->flags = CKF_TOKEN_PRESENT;
  LEAVE(CKR_OK);
}

CK_RV C_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
  ENTER();
  if (slot != SLOT) LEAVE(CKR_SLOT_ID_INVALID);
  memset(info, 0, sizeof *info);
  pad(info->label, 32, label);
  pad(info->manufacturerID, 32, "bsn-gateway tests");
  pad(info->model, 16, "MOCK-SM2");
  pad(info->serialNumber, 16, "0001");
  info->flags = CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED;
  CK_ULONG open = 0;
  for (int i = 0; i < MAX_SESSIONS; i++) open += sessions[i].open;
  /* As the profile says of such devices: no session limit of their own (the table
   * above bounds it at MAX_SESSIONS). */
  info->ulMaxSessionCount = info->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
  info->ulSessionCount = info->ulRwSessionCount = open;
  info->ulMaxPinLen = sizeof pin - 1;
  info->ulMinPinLen = 4;
  info->ulTotalPublicMemory = info->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
  info->ulTotalPrivateMemory = info->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
  info->hardwareVersion.major = info->firmwareVersion.major = 1;
  LEAVE(CKR_OK);
}

static const CK_MECHANISM_TYPE MECHS[] = {CKM_EC_KEY_PAIR_GEN, CKM_ECDSA, MOCK_CKM_SM2_KEY_PAIR_GEN, MOCK_CKM_SM2,
                                          MOCK_CKM_SM2_SM3};
#define NMECHS (sizeof MECHS / sizeof MECHS[0])

CK_RV C_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count) {
  ENTER();
  if (slot != SLOT) LEAVE(CKR_SLOT_ID_INVALID);
  if (list && *count < NMECHS) {
    *count = NMECHS;
    LEAVE(CKR_BUFFER_TOO_SMALL);
  }
  if (list) memcpy(list, MECHS, sizeof MECHS);
  *count = NMECHS;
  LEAVE(CKR_OK);
}

CK_RV C_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info) {
  ENTER();
  if (slot != SLOT) LEAVE(CKR_SLOT_ID_INVALID);
  info->ulMinKeySize = info->ulMaxKeySize = 256;
  switch (type) {
    case CKM_EC_KEY_PAIR_GEN:
    case MOCK_CKM_SM2_KEY_PAIR_GEN:
      info->flags = CKF_GENERATE_KEY_PAIR;
      break;
    case CKM_ECDSA:
    case MOCK_CKM_SM2:
    case MOCK_CKM_SM2_SM3:
      info->flags = CKF_SIGN;
      break;
    default:
      LEAVE(CKR_MECHANISM_INVALID);
  }
  LEAVE(CKR_OK);
}

/* === sessions and login === */

CK_RV C_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, void *app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR out) {
  (void)app;
  (void)notify;
  ENTER();
  if (slot != SLOT) LEAVE(CKR_SLOT_ID_INVALID);
  if (!(flags & CKF_SERIAL_SESSION)) LEAVE(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
  for (int i = 0; i < MAX_SESSIONS; i++) {
    if (!sessions[i].open) {
      memset(&sessions[i], 0, sizeof sessions[i]);
      sessions[i].open = 1;
      sessions[i].flags = flags;
      *out = (CK_SESSION_HANDLE)i + 1;
      LEAVE(CKR_OK);
    }
  }
  LEAVE(CKR_SESSION_COUNT);
}

static void close_session(CK_SESSION_HANDLE h) {
  sess_t *s = &sessions[h - 1];
  free(s->found);
  memset(s, 0, sizeof *s);
  for (obj_t **p = &objects; *p;) {
    if ((*p)->session == h) {
      obj_t *dead = *p;
      *p = dead->next;
      free_obj(dead);
    } else {
      p = &(*p)->next;
    }
  }
  int any = 0;
  for (int i = 0; i < MAX_SESSIONS; i++) any |= sessions[i].open;
  if (!any) logged_in = 0; /* PKCS#11: the login ends with the last session */
}

CK_RV C_CloseSession(CK_SESSION_HANDLE h) {
  ENTER();
  if (!session_of(h)) LEAVE(CKR_SESSION_HANDLE_INVALID);
  close_session(h);
  LEAVE(CKR_OK);
}

CK_RV C_CloseAllSessions(CK_SLOT_ID slot) {
  ENTER();
  if (slot != SLOT) LEAVE(CKR_SLOT_ID_INVALID);
  for (int i = 0; i < MAX_SESSIONS; i++)
    if (sessions[i].open) close_session((CK_SESSION_HANDLE)i + 1);
  LEAVE(CKR_OK);
}

CK_RV C_GetSessionInfo(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR info) {
  ENTER();
  sess_t *s = session_of(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  info->slotID = SLOT;
  info->flags = s->flags;
  info->ulDeviceError = 0;
  int rw = s->flags & CKF_RW_SESSION;
  info->state = logged_in ? (rw ? CKS_RW_USER_FUNCTIONS : CKS_RO_USER_FUNCTIONS)
                          : (rw ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION);
  LEAVE(CKR_OK);
}

CK_RV C_Login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR p, CK_ULONG len) {
  ENTER();
  if (!session_of(h)) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (user != CKU_USER) LEAVE(CKR_USER_TYPE_INVALID);
  if (logged_in) LEAVE(CKR_USER_ALREADY_LOGGED_IN);
  if (!p || len != strlen(pin) || memcmp(p, pin, len) != 0) LEAVE(CKR_PIN_INCORRECT);
  logged_in = 1;
  LEAVE(CKR_OK);
}

CK_RV C_Logout(CK_SESSION_HANDLE h) {
  ENTER();
  if (!session_of(h)) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!logged_in) LEAVE(CKR_USER_NOT_LOGGED_IN);
  logged_in = 0;
  LEAVE(CKR_OK);
}

/* === objects === */

static CK_RV copy_template(obj_t *o, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  for (CK_ULONG i = 0; i < n; i++) {
    if (t[i].type == CKA_VALUE || t[i].type == CKA_CLASS || t[i].type == CKA_KEY_TYPE) continue;
    if (!set_attr(o, t[i].type, t[i].pValue, t[i].ulValueLen)) return CKR_HOST_MEMORY;
  }
  return CKR_OK;
}

static int may_write(sess_t *s, obj_t *o) {
  return (s->flags & CKF_RW_SESSION) || (o->session && !get_bool(o, CKA_TOKEN, 0));
}

CK_RV C_CreateObject(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR out) {
  ENTER();
  sess_t *s = session_of(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  CK_OBJECT_CLASS cls = (CK_OBJECT_CLASS)-1;
  for (CK_ULONG i = 0; i < n; i++)
    if (t[i].type == CKA_CLASS && t[i].ulValueLen == sizeof cls) memcpy(&cls, t[i].pValue, sizeof cls);
  /* Keys are made in the token, never imported: only data objects are created. */
  if (cls != CKO_DATA) LEAVE(CKR_TEMPLATE_INCONSISTENT);
  obj_t *o = new_obj(h);
  if (!o) LEAVE(CKR_HOST_MEMORY);
  set_ulong(o, CKA_CLASS, CKO_DATA);
  for (CK_ULONG i = 0; i < n; i++)
    if (t[i].type != CKA_CLASS) set_attr(o, t[i].type, t[i].pValue, t[i].ulValueLen);
  int token = get_bool(o, CKA_TOKEN, 0);
  if ((token && !(s->flags & CKF_RW_SESSION))) {
    free_obj(o);
    LEAVE(CKR_SESSION_READ_ONLY);
  }
  if (get_bool(o, CKA_PRIVATE, 1) && !logged_in) {
    free_obj(o);
    LEAVE(CKR_USER_NOT_LOGGED_IN);
  }
  if (token) o->session = 0;
  link_obj(o);
  *out = o->h;
  LEAVE(token && !save() ? CKR_DEVICE_ERROR : CKR_OK);
}

CK_RV C_DestroyObject(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE oh) {
  ENTER();
  sess_t *s = session_of(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  for (obj_t **p = &objects; *p; p = &(*p)->next) {
    obj_t *o = *p;
    if (o->h != oh || !visible(o)) continue;
    if (!may_write(s, o)) LEAVE(CKR_SESSION_READ_ONLY);
    int token = o->session == 0;
    *p = o->next;
    free_obj(o);
    LEAVE(token && !save() ? CKR_DEVICE_ERROR : CKR_OK);
  }
  LEAVE(CKR_OBJECT_HANDLE_INVALID);
}

static int is_secret(obj_t *o, CK_ATTRIBUTE_TYPE t) {
  CK_ULONG cls = get_ulong(o, CKA_CLASS, 0);
  return t == CKA_VALUE && (cls == CKO_PRIVATE_KEY || cls == CKO_SECRET_KEY) &&
         (get_bool(o, CKA_SENSITIVE, 1) || !get_bool(o, CKA_EXTRACTABLE, 0));
}

CK_RV C_GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE oh, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  ENTER();
  if (!session_of(h)) LEAVE(CKR_SESSION_HANDLE_INVALID);
  obj_t *o = lookup(oh);
  if (!o || !visible(o)) LEAVE(CKR_OBJECT_HANDLE_INVALID);
  CK_RV rv = CKR_OK;
  for (CK_ULONG i = 0; i < n; i++) {
    attr_t *a = find_attr(o, t[i].type);
    if (a && is_secret(o, t[i].type)) {
      t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_ATTRIBUTE_SENSITIVE;
    } else if (!a) {
      t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_ATTRIBUTE_TYPE_INVALID;
    } else if (!t[i].pValue) {
      t[i].ulValueLen = a->len;
    } else if (t[i].ulValueLen < a->len) {
      t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_BUFFER_TOO_SMALL;
    } else {
      memcpy(t[i].pValue, a->val, a->len);
      t[i].ulValueLen = a->len;
    }
  }
  LEAVE(rv);
}

CK_RV C_SetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE oh, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  ENTER();
  sess_t *s = session_of(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  obj_t *o = lookup(oh);
  if (!o || !visible(o)) LEAVE(CKR_OBJECT_HANDLE_INVALID);
  if (!may_write(s, o)) LEAVE(CKR_SESSION_READ_ONLY);
  for (CK_ULONG i = 0; i < n; i++) {
    CK_ATTRIBUTE_TYPE ty = t[i].type;
    int is_bool = t[i].ulValueLen == sizeof(CK_BBOOL);
    CK_BBOOL v = is_bool ? *(CK_BBOOL *)t[i].pValue : 0;
    if (ty == CKA_CLASS || ty == CKA_KEY_TYPE || ty == CKA_VALUE || ty == CKA_TOKEN || ty == CKA_PRIVATE ||
        ty == CKA_EC_POINT || ty == CKA_EC_PARAMS)
      LEAVE(CKR_ATTRIBUTE_READ_ONLY);
    /* A key may become more guarded, never less. */
    if ((ty == CKA_SENSITIVE && is_bool && !v && get_bool(o, CKA_SENSITIVE, 0)) ||
        (ty == CKA_EXTRACTABLE && is_bool && v && !get_bool(o, CKA_EXTRACTABLE, 0)))
      LEAVE(CKR_ATTRIBUTE_READ_ONLY);
  }
  for (CK_ULONG i = 0; i < n; i++)
    if (!set_attr(o, t[i].type, t[i].pValue, t[i].ulValueLen)) LEAVE(CKR_HOST_MEMORY);
  LEAVE(o->session == 0 && !save() ? CKR_DEVICE_ERROR : CKR_OK);
}

CK_RV C_FindObjectsInit(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  ENTER();
  sess_t *s = session_of(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (s->finding) LEAVE(CKR_OPERATION_ACTIVE);
  free(s->found);
  s->found = NULL;
  s->nfound = s->cursor = 0;
  for (obj_t *o = objects; o; o = o->next) {
    if (!visible(o)) continue;
    int match = 1;
    for (CK_ULONG i = 0; i < n && match; i++) {
      attr_t *a = find_attr(o, t[i].type);
      match = a && !is_secret(o, t[i].type) && a->len == t[i].ulValueLen &&
              (a->len == 0 || memcmp(a->val, t[i].pValue, a->len) == 0);
    }
    if (!match) continue;
    CK_OBJECT_HANDLE *grown = realloc(s->found, (s->nfound + 1) * sizeof *grown);
    if (!grown) LEAVE(CKR_HOST_MEMORY);
    s->found = grown;
    s->found[s->nfound++] = o->h;
  }
  s->finding = 1;
  LEAVE(CKR_OK);
}

CK_RV C_FindObjects(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR out, CK_ULONG max, CK_ULONG_PTR count) {
  ENTER();
  sess_t *s = session_of(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!s->finding) LEAVE(CKR_OPERATION_NOT_INITIALIZED);
  CK_ULONG k = 0;
  while (k < max && s->cursor < s->nfound) out[k++] = s->found[s->cursor++];
  *count = k;
  LEAVE(CKR_OK);
}

CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE h) {
  ENTER();
  sess_t *s = session_of(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!s->finding) LEAVE(CKR_OPERATION_NOT_INITIALIZED);
  s->finding = 0;
  LEAVE(CKR_OK);
}

/* === key pairs and signatures === */

static CK_ATTRIBUTE_PTR template_attr(CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_ATTRIBUTE_TYPE ty) {
  for (CK_ULONG i = 0; i < n; i++)
    if (t[i].type == ty) return &t[i];
  return NULL;
}

CK_RV C_GenerateKeyPair(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR pt, CK_ULONG pn,
                        CK_ATTRIBUTE_PTR kt, CK_ULONG kn, CK_OBJECT_HANDLE_PTR pub_out,
                        CK_OBJECT_HANDLE_PTR priv_out) {
  ENTER();
  sess_t *s = session_of(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!logged_in) LEAVE(CKR_USER_NOT_LOGGED_IN);
  int sm2 = mech->mechanism == MOCK_CKM_SM2_KEY_PAIR_GEN;
  if (!sm2 && mech->mechanism != CKM_EC_KEY_PAIR_GEN) LEAVE(CKR_MECHANISM_INVALID);
  CK_ATTRIBUTE_PTR params = template_attr(pt, pn, CKA_EC_PARAMS);
  const unsigned char *oid = sm2 ? OID_SM2 : OID_P256;
  if (!sm2 && !params) LEAVE(CKR_TEMPLATE_INCOMPLETE);
  if (params && (params->ulValueLen != sizeof OID_P256 || memcmp(params->pValue, oid, sizeof OID_P256) != 0))
    LEAVE(CKR_CURVE_NOT_SUPPORTED);
  CK_ATTRIBUTE_PTR tok_pub = template_attr(pt, pn, CKA_TOKEN), tok_priv = template_attr(kt, kn, CKA_TOKEN);
  int token_pub = tok_pub && *(CK_BBOOL *)tok_pub->pValue, token_priv = tok_priv && *(CK_BBOOL *)tok_priv->pValue;
  if ((token_pub || token_priv) && !(s->flags & CKF_RW_SESSION)) LEAVE(CKR_SESSION_READ_ONLY);

  EVP_PKEY *pkey = sm2 ? EVP_PKEY_Q_keygen(NULL, NULL, "SM2") : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  if (!pkey) LEAVE(CKR_FUNCTION_FAILED);
  unsigned char point[67] = {0x04, 0x41}, d[32];
  size_t plen = 0;
  BIGNUM *bn = NULL;
  int ok = EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, point + 2, 65, &plen) && plen == 65 &&
           EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_PRIV_KEY, &bn) && BN_bn2binpad(bn, d, 32) == 32;
  BN_clear_free(bn);
  EVP_PKEY_free(pkey);
  if (!ok) LEAVE(CKR_FUNCTION_FAILED);

  obj_t *pub = new_obj(token_pub ? 0 : h), *priv = new_obj(token_priv ? 0 : h);
  CK_ULONG key_type = sm2 ? MOCK_CKK_SM2 : CKK_EC;
  CK_RV rv = CKR_HOST_MEMORY;
  if (pub && priv) {
    /* Defaults first; the template overrides them. */
    set_bool(pub, CKA_TOKEN, 0);
    set_bool(pub, CKA_PRIVATE, 0);
    set_bool(pub, CKA_VERIFY, 1);
    set_bool(priv, CKA_TOKEN, 0);
    set_bool(priv, CKA_PRIVATE, 1);
    set_bool(priv, CKA_SENSITIVE, 1);
    set_bool(priv, CKA_EXTRACTABLE, 0);
    set_bool(priv, CKA_SIGN, 1);
    rv = copy_template(pub, pt, pn);
    if (rv == CKR_OK) rv = copy_template(priv, kt, kn);
  }
  if (rv == CKR_OK) {
    set_ulong(pub, CKA_CLASS, CKO_PUBLIC_KEY);
    set_ulong(priv, CKA_CLASS, CKO_PRIVATE_KEY);
    for (obj_t *o = pub; o; o = o == pub ? priv : NULL) {
      set_ulong(o, CKA_KEY_TYPE, key_type);
      set_attr(o, CKA_EC_PARAMS, oid, sizeof OID_P256);
      set_attr(o, CKA_EC_POINT, point, sizeof point);
      set_bool(o, CKA_LOCAL, 1);
    }
    set_attr(priv, CKA_VALUE, d, sizeof d);
    set_bool(priv, CKA_ALWAYS_SENSITIVE, get_bool(priv, CKA_SENSITIVE, 1));
    set_bool(priv, CKA_NEVER_EXTRACTABLE, !get_bool(priv, CKA_EXTRACTABLE, 0));
    link_obj(pub);
    link_obj(priv);
    *pub_out = pub->h;
    *priv_out = priv->h;
    if ((token_pub || token_priv) && !save()) rv = CKR_DEVICE_ERROR;
  } else {
    if (pub) free_obj(pub);
    if (priv) free_obj(priv);
  }
  OPENSSL_cleanse(d, sizeof d);
  LEAVE(rv);
}

CK_RV C_SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE kh) {
  ENTER();
  sess_t *s = session_of(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (s->signing) LEAVE(CKR_OPERATION_ACTIVE);
  if (!logged_in) LEAVE(CKR_USER_NOT_LOGGED_IN);
  obj_t *key = lookup(kh);
  if (!key || !visible(key) || get_ulong(key, CKA_CLASS, 0) != CKO_PRIVATE_KEY) LEAVE(CKR_KEY_HANDLE_INVALID);
  if (!get_bool(key, CKA_SIGN, 0)) LEAVE(CKR_KEY_FUNCTION_NOT_PERMITTED);
  CK_MECHANISM_TYPE m = mech->mechanism;
  int wants_sm2 = m == MOCK_CKM_SM2 || m == MOCK_CKM_SM2_SM3;
  if (!wants_sm2 && m != CKM_ECDSA) LEAVE(CKR_MECHANISM_INVALID);
  if (wants_sm2 != is_sm2_key(key)) LEAVE(CKR_KEY_TYPE_INCONSISTENT);
  attr_t *allowed = find_attr(key, CKA_ALLOWED_MECHANISMS);
  if (allowed) {
    int found = 0;
    for (CK_ULONG i = 0; i < allowed->len / sizeof(CK_MECHANISM_TYPE); i++)
      found |= ((CK_MECHANISM_TYPE *)allowed->val)[i] == m;
    if (!found) LEAVE(CKR_MECHANISM_INVALID);
  }
  s->idlen = 0;
  if (m == MOCK_CKM_SM2_SM3 && mech->pParameter && mech->ulParameterLen) {
    if (mech->ulParameterLen > sizeof s->id) LEAVE(CKR_MECHANISM_PARAM_INVALID);
    memcpy(s->id, mech->pParameter, mech->ulParameterLen);
    s->idlen = mech->ulParameterLen;
  } else if (mech->pParameter && mech->ulParameterLen) {
    LEAVE(CKR_MECHANISM_PARAM_INVALID);
  }
  s->signing = 1;
  s->mech = m;
  s->key = kh;
  LEAVE(CKR_OK);
}

CK_RV C_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG_PTR siglen) {
  ENTER();
  sess_t *s = session_of(h);
  if (!s) LEAVE(CKR_SESSION_HANDLE_INVALID);
  if (!s->signing) LEAVE(CKR_OPERATION_NOT_INITIALIZED);
  if (!sig) {
    *siglen = 64;
    LEAVE(CKR_OK);
  }
  if (*siglen < 64) {
    *siglen = 64;
    LEAVE(CKR_BUFFER_TOO_SMALL);
  }
  s->signing = 0;
  if (s->mech == MOCK_CKM_SM2 && len != 32) LEAVE(CKR_DATA_LEN_RANGE);
  obj_t *key = lookup(s->key);
  if (!key) LEAVE(CKR_KEY_HANDLE_INVALID);
  CK_RV rv = sign_with(s, key, data, len, sig);
  if (rv == CKR_OK) *siglen = 64;
  LEAVE(rv);
}

CK_RV C_GenerateRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG len) {
  ENTER();
  if (!session_of(h)) LEAVE(CKR_SESSION_HANDLE_INVALID);
  LEAVE(RAND_bytes(out, (int)len) == 1 ? CKR_OK : CKR_FUNCTION_FAILED);
}

/* === what a signing token of this kind does not do === */

#pragma GCC diagnostic ignored "-Wunused-parameter"
#define UNSUPPORTED(name, args) \
  CK_RV name args { return CKR_FUNCTION_NOT_SUPPORTED; }

UNSUPPORTED(C_InitToken, (CK_SLOT_ID a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d))
UNSUPPORTED(C_InitPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c))
UNSUPPORTED(C_SetPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d, CK_ULONG e))
UNSUPPORTED(C_GetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
UNSUPPORTED(C_SetOperationState,
            (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE d, CK_OBJECT_HANDLE e))
UNSUPPORTED(C_CopyObject,
            (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e))
UNSUPPORTED(C_GetObjectSize, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ULONG_PTR c))
UNSUPPORTED(C_EncryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
UNSUPPORTED(C_Encrypt, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_EncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_EncryptFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
UNSUPPORTED(C_DecryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
UNSUPPORTED(C_Decrypt, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_DecryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_DecryptFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
UNSUPPORTED(C_DigestInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b))
UNSUPPORTED(C_Digest, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_DigestUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c))
UNSUPPORTED(C_DigestKey, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b))
UNSUPPORTED(C_DigestFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
UNSUPPORTED(C_SignUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c))
UNSUPPORTED(C_SignFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
UNSUPPORTED(C_SignRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
UNSUPPORTED(C_SignRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_VerifyInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
UNSUPPORTED(C_Verify, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e))
UNSUPPORTED(C_VerifyUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c))
UNSUPPORTED(C_VerifyFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c))
UNSUPPORTED(C_VerifyRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
UNSUPPORTED(C_VerifyRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_DigestEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_DecryptDigestUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_SignEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_DecryptVerifyUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
UNSUPPORTED(C_GenerateKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d,
                            CK_OBJECT_HANDLE_PTR e))
UNSUPPORTED(C_WrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d,
                        CK_BYTE_PTR e, CK_ULONG_PTR f))
UNSUPPORTED(C_UnwrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_BYTE_PTR d, CK_ULONG e,
                          CK_ATTRIBUTE_PTR f, CK_ULONG g, CK_OBJECT_HANDLE_PTR i))
UNSUPPORTED(C_DeriveKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_ATTRIBUTE_PTR d,
                          CK_ULONG e, CK_OBJECT_HANDLE_PTR f))
UNSUPPORTED(C_SeedRandom, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c))
UNSUPPORTED(C_GetFunctionStatus, (CK_SESSION_HANDLE a))
UNSUPPORTED(C_CancelFunction, (CK_SESSION_HANDLE a))
UNSUPPORTED(C_WaitForSlotEvent, (CK_FLAGS a, CK_SLOT_ID_PTR b, void *c))

static CK_FUNCTION_LIST functions = {
    {2, 40},
    C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo, C_GetTokenInfo,
    C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_InitPIN, C_SetPIN, C_OpenSession, C_CloseSession,
    C_CloseAllSessions, C_GetSessionInfo, C_GetOperationState, C_SetOperationState, C_Login, C_Logout,
    C_CreateObject, C_CopyObject, C_DestroyObject, C_GetObjectSize, C_GetAttributeValue, C_SetAttributeValue,
    C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal, C_EncryptInit, C_Encrypt, C_EncryptUpdate,
    C_EncryptFinal, C_DecryptInit, C_Decrypt, C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest,
    C_DigestUpdate, C_DigestKey, C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal, C_SignRecoverInit,
    C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal, C_VerifyRecoverInit, C_VerifyRecover,
    C_DigestEncryptUpdate, C_DecryptDigestUpdate, C_SignEncryptUpdate, C_DecryptVerifyUpdate, C_GenerateKey,
    C_GenerateKeyPair, C_WrapKey, C_UnwrapKey, C_DeriveKey, C_SeedRandom, C_GenerateRandom, C_GetFunctionStatus,
    C_CancelFunction, C_WaitForSlotEvent,
};

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
  if (!out) return CKR_ARGUMENTS_BAD;
  *out = &functions;
  return CKR_OK;
}
