{{- define "sluice.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sluice.labels" -}}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: service-proxy
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sluice.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The fallback dataplanes program iptables/IPVS, which serialise on the xtables lock with every
other iptables user on the node.
*/}}
{{- define "sluice.usesXtables" -}}
{{- if has .Values.sluice.dataplane (list "iptables" "ipvs") -}}true{{- end -}}
{{- end -}}

{{/*
The KubeProxyConfiguration document: pasted text, then fields from values, then the settings
the chart must own. Fails naming the problem when the pasted text is not a usable
KubeProxyConfiguration.
*/}}
{{- define "sluice.kubeProxyConfiguration" -}}
{{- $kp := dict -}}
{{- with .Values.config.kubeProxyConfigurationYaml -}}
{{- $pasted := fromYaml . -}}
{{- if hasKey $pasted "Error" -}}
{{- fail (printf "config.kubeProxyConfigurationYaml is not valid YAML: %s" (get $pasted "Error")) -}}
{{- end -}}
{{- $kp = $pasted -}}
{{- end -}}
{{- $kp = mustMergeOverwrite $kp (deepCopy .Values.config.kubeProxyConfiguration) -}}
{{- $kind := get $kp "kind" | default "KubeProxyConfiguration" -}}
{{- if ne $kind "KubeProxyConfiguration" -}}
{{- fail (printf "config: kind %q is not KubeProxyConfiguration; paste only the config.conf key of the kube-proxy ConfigMap, not the ConfigMap itself" $kind) -}}
{{- end -}}
{{- $apiVersion := get $kp "apiVersion" | default "kubeproxy.config.k8s.io/v1alpha1" -}}
{{- if ne $apiVersion "kubeproxy.config.k8s.io/v1alpha1" -}}
{{- fail (printf "config: apiVersion %q is not kubeproxy.config.k8s.io/v1alpha1; paste only the KubeProxyConfiguration (the config.conf key of the kube-proxy ConfigMap)" $apiVersion) -}}
{{- end -}}
{{- $override := get $kp "hostnameOverride" | default "" -}}
{{- if $override -}}
{{- fail (printf "config: hostnameOverride %q would give every node the same name; remove it (the DaemonSet passes each node's name in NODE_NAME)" $override) -}}
{{- end -}}
{{- $client := get $kp "clientConnection" | default dict -}}
{{- $_ := set $client "kubeconfig" "" -}}
{{- $_ = set $kp "clientConnection" $client -}}
{{- $_ = set $kp "apiVersion" $apiVersion -}}
{{- $_ = set $kp "kind" $kind -}}
{{- $_ = set $kp "metricsBindAddress" (include "sluice.hostPort" (list .Values.metrics.bindAddress .Values.metrics.port)) -}}
{{- $_ = set $kp "healthzBindAddress" (include "sluice.hostPort" (list "0.0.0.0" .Values.healthz.port)) -}}
{{- toYaml $kp -}}
{{- end -}}

{{- define "sluice.hostPort" -}}
{{- $host := index . 0 -}}
{{- if contains ":" $host -}}
{{- printf "[%s]:%d" $host (int (index . 1)) -}}
{{- else -}}
{{- printf "%s:%d" $host (int (index . 1)) -}}
{{- end -}}
{{- end -}}

{{/* The SluiceConfiguration document; empty values mean "Sluice's default" and are left out. */}}
{{- define "sluice.sluiceConfiguration" -}}
{{- $s := .Values.sluice -}}
{{- $doc := dict "apiVersion" "sluice.dev/v1alpha1" "kind" "SluiceConfiguration" -}}
{{- $_ := set $doc "dataplane" $s.dataplane -}}
{{- $_ = set $doc "interfaces" $s.interfaces -}}
{{- $_ = set $doc "pinPath" $s.pinPath -}}
{{- $maps := dict -}}
{{- range $k, $v := $s.maps -}}
{{- $_ = set $maps $k (int64 $v) -}}
{{- end -}}
{{- $_ = set $doc "maps" $maps -}}
{{- $_ = set $doc "maglev" (dict "tableSize" (int64 $s.maglev.tableSize)) -}}
{{- $_ = set $doc "xdp" (dict "mode" $s.xdp.mode) -}}
{{- $_ = set $doc "nodePortLoopback" $s.nodePortLoopback -}}
{{- range $k := list "scheduler" "syncPeriod" "minSyncPeriod" -}}
{{- with get $s $k -}}
{{- $_ = set $doc $k . -}}
{{- end -}}
{{- end -}}
{{- toYaml $doc -}}
{{- end -}}

{{/* The container's capabilities as Kubernetes spells them (no CAP_ prefix). */}}
{{- define "sluice.capabilities" -}}
{{- $caps := list -}}
{{- range .Values.securityContext.capabilities -}}
{{- $caps = append $caps (trimPrefix "CAP_" .) -}}
{{- end -}}
{{- if include "sluice.usesXtables" . -}}
{{- /* iptables and ipvsadm open raw sockets */ -}}
{{- $caps = append $caps "NET_RAW" -}}
{{- end -}}
{{- toJson (uniq $caps) -}}
{{- end -}}

{{/*
Checks that JSON Schema cannot express; each failure names the value and what to do.
*/}}
{{- define "sluice.validate" -}}
{{- $n := int64 .Values.sluice.maglev.tableSize -}}
{{- range $d := untilStep 2 65537 1 -}}
{{- if gt (mul $d $d) $n -}}{{- break -}}{{- end -}}
{{- if eq (mod $n $d) 0 -}}
{{- fail (printf "sluice.maglev.tableSize: %d is not prime (it divides by %d); Maglev needs a prime table size, e.g. 16381 or 65537" $n $d) -}}
{{- end -}}
{{- end -}}
{{- if not .Values.securityContext.privileged -}}
{{- $caps := include "sluice.capabilities" . | fromJsonArray -}}
{{- if not (or (has "SYS_ADMIN" $caps) (and (has "BPF" $caps) (has "NET_ADMIN" $caps) (has "PERFMON" $caps))) -}}
{{- fail (printf "securityContext.capabilities %v cannot load Sluice's datapath: it needs BPF, NET_ADMIN and PERFMON (or SYS_ADMIN, which implies them), or securityContext.privileged: true" $caps) -}}
{{- end -}}
{{- end -}}
{{- range .Values.extraArgs -}}
{{- if regexMatch "^--(config|sluice-config|validate-config)(=|$)" . -}}
{{- fail (printf "extraArgs: %s is the chart's to set (it points Sluice at the rendered ConfigMap); put settings in config.kubeProxyConfiguration or sluice instead" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
