import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import {
  callerKey,
  entityManagerKey,
  peerCertificateKey,
} from "../rpc/services.js";
import { type AuthMode, identifyCaller } from "./authenticate.js";
import { mayCall } from "./roles.js";

/**
 * Establishes the caller of every call before its handler runs, refuses
 * callers whose role may not call the method, and hands the caller to the
 * handler in `callerKey`. A refused call reads no request message, so it
 * writes nothing.
 */
export function authInterceptor(mode: AuthMode): Interceptor {
  return (next) => async (request) => {
    const em = request.contextValues.get(entityManagerKey);
    if (!em) throw new Error("the call has no entity manager");
    const caller = await identifyCaller(em, mode, {
      authorization: request.header.get("authorization"),
      certificateFingerprint: request.contextValues.get(peerCertificateKey),
    });
    if (!mayCall(caller.role, request.method)) {
      throw new ConnectError(
        `the ${caller.role} role may not call ${request.service.typeName}.${request.method.name}`,
        Code.PermissionDenied,
      );
    }
    request.contextValues.set(callerKey, caller);
    return next(request);
  };
}
