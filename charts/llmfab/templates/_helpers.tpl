{{/* Names, labels and images shared by the templates. */}}

{{- define "llmfab.labels" -}}
app.kubernetes.io/name: llmfab
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: llmfab
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "llmfab.operatorSelector" -}}
app.kubernetes.io/name: llmfab
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "llmfab.operatorName" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmfab.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* Namespaces that get the workload ServiceAccount, Role and artifacts claim. */}}
{{- define "llmfab.workloadNamespaces" -}}
{{- $ns := .Values.workloads.namespaces | default (list .Release.Namespace) -}}
{{- toJson $ns -}}
{{- end -}}

{{- define "llmfab.claimName" -}}
{{- default .Values.artifacts.claimName .Values.artifacts.existingClaim -}}
{{- end -}}

{{/* Multi-node training needs every training pod to mount the artifacts volume. */}}
{{- define "llmfab.checkValues" -}}
{{- if and (gt (int .Values.training.maxNodes) 1) (ne .Values.artifacts.accessMode "ReadWriteMany") -}}
{{- fail (printf "training.maxNodes=%d needs artifacts.accessMode=ReadWriteMany: with %s (k3s local-path is node-local and ReadWriteOnce) pods on other nodes cannot mount the artifacts; use a ReadWriteMany storage class (e.g. NFS: artifacts.storageClassName=nfs-client, artifacts.accessMode=ReadWriteMany) or training.maxNodes=1" (int .Values.training.maxNodes) .Values.artifacts.accessMode) -}}
{{- end -}}
{{- if gt (int .Values.operator.replicas) 1 -}}
{{- fail "operator.replicas: at most 1 (the operator runs standalone, without kopf peering)" -}}
{{- end -}}
{{- end -}}
